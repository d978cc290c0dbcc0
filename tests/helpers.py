"""Test helpers: the repo's configs, a tiny training config, a compilation cache shared by a test."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

from effnet_jax.train.config import load_config_file

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module args...`` from the repo root on CPU, stdout and stderr captured (pipes, as in a log)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def load_config(name: str, *args):
    """``configs/<name>.py``'s ``get_config(*args)``, loaded by path as effnet-train loads it."""
    return load_config_file(REPO / "configs" / f"{name}.py").get_config(*args)


def tiny_config(**overrides):
    """The synthetic debug config shrunk for tests: Lite0 at 32 px, random init, native depthwise (fast to compile)."""
    c = load_config("debug_synthetic")
    c.image_size = 32
    c.model.depthwise_impl = "native"
    c.data.synthetic_examples = 64
    c.batch_size = 16
    c.eval_batch_size = 16
    c.progress_bar = False
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c


def machinery_config(**overrides):
    """``tiny_config`` on the unlisted test network (one block per stage): for tests of what surrounds the model."""
    from effnet_jax.models.variants import TEST_VARIANT

    return tiny_config(**{"model.name": TEST_VARIANT.name, **overrides})


def step_setting(config):
    """(model, frozen mask, optimizer, fresh train state, an 8-image batch of both labels) for one train step of ``config``."""
    from effnet_jax.train import freeze, optimizer
    from effnet_jax.train import state as state_lib

    model, variables = state_lib.model_from_config(config)
    frozen = freeze.frozen_mask(variables["params"], freeze.freeze_patterns(config, variables["params"]))
    tx, _ = optimizer.create_optimizer(config, frozen, total_steps=10, steps_per_epoch=5)
    state = state_lib.create_train_state(variables, tx, config)
    rs = np.random.RandomState(0)
    batch = {"image": rs.randn(8, 32, 32, 3).astype(np.float32), "label": np.array([0, 1, 1, 1, 0, 0, 1, 0], np.int32)}
    return model, frozen, tx, state, batch


@contextlib.contextmanager
def persistent_compilation_cache(directory: str):
    """Compiled programs reused across identical compilations (same HLO) while active.

    Runs of ``train_and_evaluate`` in one test build equal programs from fresh
    closures; on a 2-core CPU the cache turns minutes of recompiling into seconds.
    """
    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    old = {n: getattr(jax.config, n) for n in names}
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _reset_cache()
    try:
        yield
    finally:
        for n, v in old.items():
            jax.config.update(n, v)
        _reset_cache()


def session_compilation_cache(tmp_path_factory):
    """``persistent_compilation_cache`` in one folder for the whole pytest session.

    Modules whose fixtures train the same tiny run (same config keys that reach the
    compiled steps, devices and number of steps) then compile those steps once between them,
    on whichever worker they run.
    """
    base = tmp_path_factory.getbasetemp()
    # A pytest-xdist worker's base is a folder of the session's: all workers share one cache,
    # so a program one worker compiled is read by the others.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return persistent_compilation_cache(base / "jax_cache")


def _reset_cache():
    # The cache directory is read once per process; resetting makes jax read it again.
    compilation_cache.reset_cache()


def hand_made_run(workdir, config: dict, step: int = 7, train_class_counts=(), metrics=()):
    """A ``runs.Run`` built by hand (no checkpoint on disk) for threshold and report tests."""
    import ml_collections

    from effnet_jax import runs
    from effnet_jax.runs.layout import Layout
    from effnet_jax.runs.record import RunRecord

    record = RunRecord(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, train_class_counts=tuple(train_class_counts))
    return runs.Run(
        workdir=str(workdir),
        layout=Layout(str(workdir)),
        config=ml_collections.ConfigDict(config),
        record=record,
        step=step,
        checkpoint=step,
        calibration=None,
        metrics=tuple(metrics),
        soup=None,
    )


STAND_IN_RECORD_FIELDS = dict(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, train_class_counts=(20, 44))


def stand_in_run(workdir: str, config=None, state=None, metrics=None) -> str:
    """A run directory as effnet-train leaves it at step 3, without training: a stand-in state.

    ``metrics``: the lines of metrics.jsonl (default: one validation evaluation at step 3).
    """
    import json

    from effnet_jax.runs import checkpoints as checkpoint_lib
    from effnet_jax.runs import record as run_record
    from effnet_jax.runs.layout import Layout

    record = run_record.RunRecord(**STAND_IN_RECORD_FIELDS)
    config = config or machinery_config(num_train_steps=3)
    state = state or {
        "step": np.int32(3),
        "params": {"conv_stem": {"kernel": np.ones((3, 3, 3, 8), np.float32)}},
        "batch_stats": {"bn": {"mean": np.zeros(8, np.float32)}},
    }
    checkpoint_lib.write_checkpoint(workdir, 3, state, {"position": 3}, config, {"auc": 0.6}, run=record)
    with open(Layout(workdir).config, "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    run_record.write(workdir, record)
    if metrics is None:
        metrics = [{"step": 3, "split": "validation", "auc": 0.6, "data": "synthetic"}]
    with open(Layout(workdir).metrics, "w") as f:
        f.writelines(json.dumps(m) + "\n" for m in metrics)
    return workdir


def assert_close(a, b, tol=1e-5):
    """max |a - b| within ``tol`` of the reference's largest magnitude (float32 sums reorder)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)
    assert err <= tol, f"relative error {err:.2e} > {tol:.0e}"


def random_variables(model, seed: int = 0) -> dict:
    """Random variables for ``model`` drawn with numpy from its shapes: no initialisation program to compile.

    Kernels are He-normal over their fan-in, norms start at unit scale and variance with zero
    bias and mean, biases at zero: a network whose activations stay in range, for tests of
    what a model does with any weights.
    """
    from effnet_jax.models.efficientnet import variable_shapes

    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = str(path[-1].key)
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1])) or 1
            return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(leaf.dtype)
        return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, variable_shapes(model))


def edit_json(path, edit):
    """The JSON file at ``path`` rewritten after ``edit(value)`` changed its value in place."""
    with open(path) as f:
        value = json.load(f)
    edit(value)
    with open(path, "w") as f:
        f.write(json.dumps(value))


def eval_pass(config, split: str, image_size: int = 16) -> list:
    """Every batch of one evaluation pass over ``split`` of ``config`` (batches of 4, grey 0.5 normalisation)."""
    from effnet_jax.data import pipeline

    return list(
        pipeline.create_split(
            config,
            split,
            training=False,
            batch_size=4,
            image_size=image_size,
            mean=(0.5,) * 3,
            std=(0.5,) * 3,
            seed=0,
            shard_index=0,
            shard_count=1,
        )
    )


VICTIM_TEXT = "not yours\n"


def victim_file(tmp_path):
    """A file outside the folder a test hands a command (``tmp_path/outside/victim.txt``): it must stay as it is."""
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    victim = outside / "victim.txt"
    victim.write_text(VICTIM_TEXT)
    return victim


def train_synthetic(workdir, *overrides) -> subprocess.CompletedProcess:
    """effnet-train on configs/debug_synthetic.py for 2 steps at 32 px, in a subprocess, with ``overrides``."""
    return run_module(
        "effnet_jax.cli.train",
        "--config=configs/debug_synthetic.py",
        f"--workdir={workdir}",
        "--config.num_train_steps=2",
        "--config.image_size=32",
        *overrides,
    )
