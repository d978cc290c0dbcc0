"""Sharpness-aware steps: the optimizer sees the gradient at the weights moved rho along the unit gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from helpers import machinery_config, step_setting

from effnet_jax.train import losses, steps
from effnet_jax.train.config import validate_config

RHO = 0.05


def test_a_negative_rho_is_refused_naming_its_key():
    with pytest.raises(ValueError, match=r"config.optimizer.sam_rho=-0.1: expected a finite number >= 0"):
        validate_config(machinery_config(**{"optimizer.sam_rho": -0.1}))


def test_the_ascent_moves_trainable_leaves_by_rho_in_total_and_leaves_frozen_ones():
    params = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([1.0]), "c": jnp.array([5.0])}
    grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([7.0]), "c": jnp.array([0.0])}
    frozen = {"a": False, "b": True, "c": False}
    moved = steps.sam_ascent(params, grads, frozen, 0.5)
    np.testing.assert_allclose(moved["a"], [3.0 + 0.3, 0.4], rtol=1e-6)  # the frozen 7 counts for nothing
    assert moved["b"] is params["b"]
    np.testing.assert_array_equal(moved["c"], params["c"])


@pytest.fixture(scope="module")
def setting():
    config = machinery_config(
        **{
            "model.drop_rate": 0.0,
            "model.drop_path_rate": 0.0,
            "optimizer.sam_rho": RHO,
            "freeze_until": "blocks_2",
            # SGD from step 0: a warmup starts at a zero rate, and Adam's first step is the
            # gradient's sign, which both passes often share.
            "optimizer.name": "sgd",
            "schedule.name": "constant",
            "schedule.warmup_epochs": 0.0,
        }
    )
    validate_config(config)
    model, frozen, tx, state, batch = step_setting(config)
    return config, model, frozen, tx, state, batch


def test_the_update_is_the_optimizer_on_the_gradient_at_the_perturbed_weights(setting):
    config, model, frozen, tx, state, batch = setting
    weights = jnp.array([2.0, 0.5])

    def loss_at(params):
        logits, new = model.apply(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True, mutable=["batch_stats"]
        )
        return losses.weighted_mean_loss(logits, batch["label"], weights), new["batch_stats"]

    # Jitted: an eager pass dispatches every op of the network one by one, many times slower.
    (loss, stats), g1 = jax.jit(jax.value_and_grad(loss_at, has_aux=True))(state.params)
    flat_g1, flat_frozen = traverse_util.flatten_dict(g1), traverse_util.flatten_dict(frozen)
    norm = np.sqrt(sum(float(jnp.sum(g**2)) for k, g in flat_g1.items() if not flat_frozen[k]))
    perturbed = jax.tree.map(lambda f, p, g: p if f else p + RHO * g / norm, frozen, state.params, g1)
    g2 = jax.jit(jax.grad(lambda p: loss_at(p)[0]))(perturbed)
    updates, _ = tx.update(g2, state.opt_state, state.params)
    expected = optax.apply_updates(state.params, updates)

    fn = steps.bound_train_step(config, model=model, tx=tx, frozen=frozen, class_weights=weights)
    new_state, metrics = jax.jit(fn)(state, batch)
    plain_state, _ = jax.jit(lambda s, b: fn(s, b, sam_rho=0.0))(state, batch)

    # Compared as updates (new - old), to a tolerance of 1% of the largest: the eager reference
    # and the jitted step sum in different orders.
    old = traverse_util.flatten_dict(state.params)
    step = {k: v - old[k] for k, v in traverse_util.flatten_dict(new_state.params).items()}
    want = {k: v - old[k] for k, v in traverse_util.flatten_dict(expected).items()}
    plain = {k: v - old[k] for k, v in traverse_util.flatten_dict(plain_state.params).items()}
    scale = max(float(np.abs(v).max()) for v in want.values())
    for k in step:
        np.testing.assert_allclose(step[k], want[k], rtol=0, atol=0.01 * scale, err_msg="/".join(k))
        if flat_frozen[k]:
            assert not np.any(step[k]), "/".join(k)
    # ...and a plain step is further from it than that.
    assert max(float(np.abs(plain[k] - want[k]).max()) for k in want) > 0.1 * scale
    # Loss and BatchNorm statistics are the first pass's, at the weights themselves.
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-6)
    for a, b in zip(jax.tree.leaves(new_state.batch_stats), jax.tree.leaves(stats)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
