"""A run stopped part way and resumed is bitwise the run that never stopped, however it was stopped."""

import json
import os

import jax
import numpy as np
import pytest
from run_fixtures import RESUME_MECHANISMS, resume_config, unhandled_sigterm

from effnet_jax.runs.metrics_log import read_metrics
from effnet_jax.train import feed
from effnet_jax.train.parallel import Parallel


def _saved_data_state(workdir, step):
    with open(os.path.join(workdir, "checkpoints", str(step), "data_iter", "metadata")) as f:
        return json.load(f)


@pytest.mark.parametrize("mechanism", RESUME_MECHANISMS)
def test_stopped_and_resumed_equals_six_steps_straight_bitwise(mechanism, straight_run, resumed_run):
    resumed = resumed_run(mechanism)
    leaves_a = jax.tree_util.tree_leaves_with_path(straight_run["state"])
    leaves_b = jax.tree_util.tree_leaves_with_path(resumed["state"])
    assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
    for (path, a), (_, b) in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
    # Same data order: the resumed run continued the grain iterator where the first stopped.
    for step in (3, 6):
        assert _saved_data_state(straight_run["workdir"], step) == _saved_data_state(resumed["workdir"], step)
    losses = [
        [(r["step"], r["loss"]) for r in read_metrics(run["workdir"], "train")] for run in (straight_run, resumed)
    ]
    assert losses[0] == losses[1]  # nothing lost, nothing recorded twice
    # One wall-time record per invocation: the resumed run was started twice.
    records = [read_metrics(run["workdir"], "run") for run in (straight_run, resumed)]
    assert [(r["step"], r["resumed_from_step"]) for r in records[0]] == [(6, 0)]
    stopped_at = {"stop_after_steps": 3, "sigterm": 2}[mechanism]
    assert [(r["step"], r["resumed_from_step"], r.get("preempted", False)) for r in records[1]] == [
        (stopped_at, 0, mechanism == "sigterm"),
        (6, stopped_at, False),
    ]
    assert all(r["wall_seconds"] > 0 for r in records[0] + records[1])


def test_stop_after_steps_stops_at_that_step(resumed_run):
    assert int(resumed_run("stop_after_steps")["first"].step) == 3


def test_sigterm_saves_at_the_next_step_boundary_and_exits_cleanly(resumed_run):
    run = resumed_run("sigterm")
    assert run["saved"] == [2]
    assert "stopped by SIGTERM after step 2" in str(run["stopped"])
    assert getattr(unhandled_sigterm, "calls", 0) == 0  # the trainer's handler took it
    assert run["handler_after"] is unhandled_sigterm  # and the process's own handler was put back


def test_the_shared_runs_train_on_the_resident_path_unless_told_off():
    par = Parallel("jit", jax.devices()[:1])
    assert feed.use_resident(resume_config(), par, num_examples=64, frame=32)
    assert not feed.use_resident(resume_config(**{"data.resident": "off"}), par, num_examples=64, frame=32)
    with pytest.raises(ValueError, match=r"config.data.resident='on' cannot run with config.parallelism='pmap'"):
        feed.use_resident(resume_config(**{"data.resident": "on"}), Parallel("pmap"), 64, 32)
