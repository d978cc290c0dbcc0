"""The real ``train_and_evaluate`` on the synthetic set: end to end, bitwise resume, NaN stop."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from helpers import session_compilation_cache, tiny_config

from effnet_jax.data import pipeline
from effnet_jax.inference.restore import restore_for_inference
from effnet_jax.runs import checkpoints as checkpoint_lib
from effnet_jax.runs.metrics_log import read_metrics
from effnet_jax.train import loop


def _config(**overrides):
    base = {
        "num_train_steps": 6,
        "eval_every_steps": 3,
        "checkpoint_every_steps": 3,
        "log_every_steps": 1,
        "keep_checkpoints": 2,
        # One device: eight fake ones share two cores and mostly wait on each other here;
        # the eight-device step is covered by test_train_steps.py.
        "num_devices": 1,
    }
    base.update(overrides)
    return tiny_config(**base)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run of 6 steps straight; one of 3 steps, a stop, and 3 resumed steps (plus a copy at 3)."""
    root = tmp_path_factory.mktemp("runs")
    # test_hostile_runs.py and test_soup.py train these very steps: the session cache compiles them once.
    with session_compilation_cache(tmp_path_factory):
        straight = loop.train_and_evaluate(_config(), str(root / "straight"))
        first = loop.train_and_evaluate(_config(stop_after_steps=3), str(root / "resumed"))
        shutil.copytree(root / "resumed", root / "at_step_3")
        resumed = loop.train_and_evaluate(_config(), str(root / "resumed"))
        yield {
            "root": root,
            "straight": jax.device_get(straight),
            "first": jax.device_get(first),
            "resumed": jax.device_get(resumed),
        }


def _saved_data_state(workdir, step):
    with open(os.path.join(workdir, "checkpoints", str(step), "data_iter", "metadata")) as f:
        return json.load(f)


def test_debug_config_trains_end_to_end_and_restores_for_inference(runs):
    workdir = str(runs["root"] / "straight")
    assert int(runs["straight"].step) == 6
    assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()) == [3, 6]
    train = read_metrics(workdir, "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert all(r["data"] == "synthetic" and np.isfinite(r["loss"]) for r in train)
    val = read_metrics(workdir, "validation")
    assert [r["step"] for r in val] == [3, 6]
    for key in ("loss", "accuracy", "auc", "precision", "recall", "specificity", "f1", "confusion_matrix"):
        assert key in val[-1]
    assert val[-1]["n"] == pipeline.split_info(loop.resolve_data(_config()).data, "validation")["num_examples"]
    assert os.listdir(os.path.join(workdir, "tensorboard"))

    restored = restore_for_inference(workdir, "latest")
    model, variables = restored.model, restored.variables
    assert restored.step == 6 and restored.run.image_size == 32
    np.testing.assert_array_equal(
        variables["params"]["classifier"]["kernel"], runs["straight"].ema_params["classifier"]["kernel"]
    )
    logits = model.apply(variables, np.zeros((2, 32, 32, 3), np.float32), train=False)
    assert logits.shape == (2, 2)


def test_six_steps_straight_equal_three_steps_stop_and_three_resumed_bitwise(runs):
    assert int(runs["first"].step) == 3
    straight, resumed = runs["straight"], runs["resumed"]
    leaves_a = jax.tree_util.tree_leaves_with_path(straight)
    leaves_b = jax.tree_util.tree_leaves_with_path(resumed)
    assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
    for (path, a), (_, b) in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
    # Same data order: the resumed run continued the grain iterator where the first stopped.
    for step in (3, 6):
        assert _saved_data_state(runs["root"] / "straight", step) == _saved_data_state(runs["root"] / "resumed", step)
    losses = [[r["loss"] for r in read_metrics(str(runs["root"] / name), "train")] for name in ("straight", "resumed")]
    assert losses[0] == losses[1]
    # One wall-time record per invocation: the resumed run was started twice.
    runs_records = [read_metrics(str(runs["root"] / name), "run") for name in ("straight", "resumed")]
    assert [(r["step"], r["resumed_from_step"]) for r in runs_records[0]] == [(6, 0)]
    assert [(r["step"], r["resumed_from_step"]) for r in runs_records[1]] == [(3, 0), (6, 3)]
    assert all(r["wall_seconds"] > 0 for r in runs_records[0] + runs_records[1])


class _NaNImages:
    """Wraps a training iterator, keeping its state API, and poisons its images."""

    def __init__(self, it):
        self.it = it

    def __iter__(self):
        return self

    def __next__(self):
        batch = dict(next(self.it))
        batch["image"] = np.full_like(batch["image"], np.nan)
        return batch

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)


def test_nan_loss_stops_the_run_and_leaves_the_last_good_checkpoint(runs, monkeypatch, tmp_path_factory):
    workdir = str(runs["root"] / "at_step_3")
    real = pipeline.create_split

    def poisoned(data_config, split, *, training, **kwargs):
        ds = real(data_config, split, training=training, **kwargs)
        return _NaNImages(iter(ds)) if training else ds

    monkeypatch.setattr(pipeline, "create_split", poisoned)
    with session_compilation_cache(tmp_path_factory):
        with pytest.raises(loop.NonFiniteLossError, match=r"loss is nan at step 4.*last good checkpoint is step 3"):
            loop.train_and_evaluate(_config(), workdir)
    ckpt = checkpoint_lib.Checkpointer(workdir, read_only=True)
    assert ckpt.all_steps() == [3]
    ckpt.close()
    restored = restore_for_inference(workdir, "latest")
    variables = restored.variables
    assert restored.step == 3
    np.testing.assert_array_equal(
        variables["params"]["classifier"]["kernel"], runs["first"].ema_params["classifier"]["kernel"]
    )


def test_early_stopping_ends_the_run_after_patience_evaluations_without_improvement(runs, tmp_path_factory):
    # min_delta=1.0: no AUC can improve by a whole unit, so the second evaluation stops the run.
    config = _config(
        **{
            "eval_every_steps": 2,
            "early_stopping.metric": "auc",
            "early_stopping.mode": "max",
            "early_stopping.patience": 1,
            "early_stopping.min_delta": 1.0,
        }
    )
    workdir = str(runs["root"] / "early_stop")
    with session_compilation_cache(tmp_path_factory):
        state = loop.train_and_evaluate(config, workdir)
    assert int(state.step) == 4
    assert [r["step"] for r in read_metrics(workdir, "validation")] == [2, 4]
    ckpt = checkpoint_lib.Checkpointer(workdir, read_only=True)
    assert ckpt.latest_step() == 4
    ckpt.close()


def test_results_row_reports_the_last_validation_and_the_wall_time_of_every_invocation(runs):
    from effnet_jax.reporting import run_summary

    workdir = str(runs["root"] / "resumed")
    row = run_summary.training_row(workdir)
    last_val = read_metrics(workdir, "validation")[-1]
    assert (row.name, row.step, row.split, row.image_size) == ("resumed", 6, "validation", 32)
    assert row.metrics["auc"] == last_val["auc"] and row.metrics["f1"] == last_val["f1"]
    assert row.wall_seconds == pytest.approx(sum(r["wall_seconds"] for r in read_metrics(workdir, "run")))
    assert "1 x cpu" in row.machine
    assert row.data == "synthetic"  # the loop records what it trained on; the debug config has no real data
    table = run_summary.to_markdown([row]).splitlines()
    assert len(table) == 3 and table[2].startswith("| resumed | ")
