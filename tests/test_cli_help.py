"""Every console script answers --help with exit 0 and lists its own flags with their meanings."""

import importlib
import os
import re
import subprocess
import sys

import pytest
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A few flags each command must have, so that an empty define_flags cannot pass.
EXPECTED = {
    "effnet-train": {"config", "workdir", "distributed"},
    "effnet-eval": {"workdir", "split", "checkpoint", "tta"},
    "effnet-predict": {"workdir", "checkpoint", "threshold", "out", "gradcam"},
    "effnet-convert": {"variant", "input", "output", "num_classes"},
    "effnet-data": {"data_dir", "out", "manual_dir", "exclude_list"},
    "effnet-results": {"eval", "format"},
}


def console_scripts() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml: name -> 'module:function'."""
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        text = f.read()
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[)", text, re.M | re.S).group(1)
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.:]+)"', section, re.M))


def test_every_console_script_is_checked():
    assert set(console_scripts()) == set(EXPECTED)


def _as_console_script(name: str, target: str, *args: str) -> subprocess.CompletedProcess:
    # What pip's generated wrapper does: argv[0] is the script's path, then sys.exit(entry()).
    module, function = target.split(":")
    code = f"import sys; sys.argv[0] = '/usr/local/bin/{name}'; from {module} import {function}; sys.exit({function}())"
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_help_lists_the_commands_own_flags(name):
    target = console_scripts()[name]
    proc = _as_console_script(name, target, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = " ".join(proc.stdout.split())
    own = flags.FlagValues()
    importlib.import_module(target.split(":")[0]).define_flags(own)
    assert EXPECTED[name] <= set(own)
    for flag in own:
        assert re.search(rf"--(\[no\])?{flag}\b", out), f"{name} --help does not list --{flag}"
        assert " ".join(own[flag].help.split()) in out, f"{name} --help lacks the meaning of --{flag}"
    # Only its own: none of absl's or JAX's flags (those are --helpfull's).
    assert "--verbosity" not in out and "--jax_" not in out
