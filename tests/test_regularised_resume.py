"""SAM and decay toward the start through the real trainer: resumed bitwise, the start kept in the checkpoint."""

import jax
import numpy as np
from flax import traverse_util
from helpers import session_compilation_cache
from run_fixtures import resume_config

from effnet_jax.data import pipeline
from effnet_jax.train import loop
from effnet_jax.train import optimizer as optimizer_lib
from effnet_jax.train import state as state_lib

REGULARISED = {"optimizer.sam_rho": 0.05, "optimizer.anchor_decay": 0.5}


def _anchor(state):
    found = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(x, optimizer_lib.AnchorState))]
    found = [s for s in found if isinstance(s, optimizer_lib.AnchorState)]
    assert len(found) == 1
    return traverse_util.flatten_dict(found[0].anchor, sep="/")


def test_a_regularised_run_stopped_and_resumed_is_the_straight_run_and_keeps_its_start(tmp_path_factory):
    straight_dir, resumed_dir = (str(tmp_path_factory.mktemp(n) / "run") for n in ("straight", "resumed"))
    with session_compilation_cache(tmp_path_factory):
        straight = jax.device_get(loop.train_and_evaluate(resume_config(**REGULARISED), straight_dir))
        first = loop.train_and_evaluate(resume_config(stop_after_steps=3, **REGULARISED), resumed_dir)
        assert int(first.step) == 3
        resumed = jax.device_get(loop.train_and_evaluate(resume_config(**REGULARISED), resumed_dir))
    a, b = jax.tree_util.tree_leaves_with_path(straight), jax.tree_util.tree_leaves_with_path(resumed)
    assert [p for p, _ in a] == [p for p, _ in b]
    for (path, x), (_, y) in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
    # The start the weights decay toward is the initial network, not the weights of the resume.
    _, variables = state_lib.model_from_config(resume_config(**REGULARISED))
    start = traverse_util.flatten_dict(jax.device_get(variables["params"]), sep="/")
    anchor = _anchor(resumed)
    trained = traverse_util.flatten_dict(resumed.params, sep="/")
    held = [p for p, v in anchor.items() if getattr(v, "shape", None) is not None and np.ndim(v) > 0]
    assert held and not any(p.startswith("classifier/") for p in held)
    for path in held:
        np.testing.assert_array_equal(np.asarray(anchor[path]), np.asarray(start[path]), err_msg=path)
    assert any(not np.array_equal(trained[p], start[p]) for p in held)


def test_a_linear_probe_holds_the_pretrained_weights_through_a_resume_then_fine_tunes_them(tmp_path_factory):
    # A probe of 4 of the run's 6 steps; the stop at step 3 falls inside it.
    base = loop.resolve_data(resume_config())
    total, steps_per_epoch = loop.num_steps(base, pipeline.split_info(base.data, "train"))
    probe = {"optimizer.probe_epochs": 4 / steps_per_epoch, "optimizer.probe_learning_rate": 3e-3}
    assert optimizer_lib.probe_steps(resume_config(**probe), total, steps_per_epoch) == 4
    straight_dir, resumed_dir = (str(tmp_path_factory.mktemp(n) / "run") for n in ("probe", "probe_resumed"))
    with session_compilation_cache(tmp_path_factory):
        straight = jax.device_get(loop.train_and_evaluate(resume_config(**probe), straight_dir))
        first = jax.device_get(loop.train_and_evaluate(resume_config(stop_after_steps=3, **probe), resumed_dir))
        resumed = jax.device_get(loop.train_and_evaluate(resume_config(**probe), resumed_dir))
    for x, y in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    _, variables = state_lib.model_from_config(resume_config(**probe))
    start = traverse_util.flatten_dict(jax.device_get(variables["params"]), sep="/")
    at_3 = traverse_util.flatten_dict(first.params, sep="/")
    final = traverse_util.flatten_dict(resumed.params, sep="/")
    pretrained = [p for p in start if not p.startswith("classifier/")]
    for path in pretrained:
        np.testing.assert_array_equal(at_3[path], start[path], err_msg=path)
    assert not np.array_equal(at_3["classifier/kernel"], start["classifier/kernel"])
    assert sum(not np.array_equal(final[p], start[p]) for p in pretrained) > len(pretrained) // 2
