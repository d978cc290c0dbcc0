"""models/batch_norm.py's BatchNorm against flax's nn.BatchNorm: values, statistics, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from helpers import assert_close

from effnet_jax.models.batch_norm import BatchNorm

MOMENTUM, EPSILON = 0.9, 1e-3


def _pair(dtype=None, axis_name=None):
    kwargs = dict(momentum=MOMENTUM, epsilon=EPSILON, dtype=dtype, axis_name=axis_name)
    return BatchNorm(**kwargs), nn.BatchNorm(**kwargs)


def _inputs(shape=(4, 6, 6, 8), seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape) * 3 + 1, jnp.float32)
    variables = {
        "params": {
            "scale": jnp.asarray(rng.uniform(0.5, 2, shape[-1]), jnp.float32),
            "bias": jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32),
        },
        "batch_stats": {
            "mean": jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32),
            "var": jnp.asarray(rng.uniform(0.5, 2, shape[-1]), jnp.float32),
        },
    }
    return x, variables


def test_variables_are_nn_batchnorms():
    ours, flax_bn = _pair()
    x = jnp.ones((2, 3, 3, 5))
    mine = ours.init(jax.random.PRNGKey(0), x, use_running_average=False)
    theirs = flax_bn.init(jax.random.PRNGKey(0), x, use_running_average=False)
    assert jax.tree_util.tree_structure(mine) == jax.tree_util.tree_structure(theirs)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_values_and_running_statistics_equal_nn_batchnorm(train, dtype):
    ours, flax_bn = _pair(dtype)
    x, variables = _inputs()
    x = x.astype(dtype or jnp.float32)
    y, stats = ours.apply(variables, x, use_running_average=not train, mutable=["batch_stats"])
    y_ref, stats_ref = flax_bn.apply(variables, x, use_running_average=not train, mutable=["batch_stats"])
    assert y.dtype == y_ref.dtype
    # Same operations in the same order: bitwise equal.
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
    for key in ("mean", "var"):
        np.testing.assert_array_equal(stats["batch_stats"][key], stats_ref["batch_stats"][key])
    if not train:
        np.testing.assert_array_equal(stats["batch_stats"]["mean"], variables["batch_stats"]["mean"])


@pytest.mark.parametrize("train", [True, False])
def test_gradients_equal_autodiff_of_nn_batchnorm(train):
    ours, flax_bn = _pair()
    x, variables = _inputs(seed=1)

    def loss(module):
        def f(x, params):
            y, _ = module.apply(
                {"params": params, "batch_stats": variables["batch_stats"]},
                x,
                use_running_average=not train,
                mutable=["batch_stats"],
            )
            # A loss that weights pixels and channels unevenly, so every term of the backward matters.
            return jnp.sum(jnp.sin(3 * y) * jnp.linspace(0.5, 2, y.shape[-1]))

        return f

    grads = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(x, variables["params"])
    grads_ref = jax.grad(loss(flax_bn), argnums=(0, 1))(x, variables["params"])
    assert_close(grads[0], grads_ref[0])
    for key in ("scale", "bias"):
        assert_close(grads[1][key], grads_ref[1][key])
    # Second derivatives too (a gradient penalty, or Grad-CAM differentiating through a step).
    second = lambda module: jax.grad(lambda x: jnp.sum(jax.grad(loss(module))(x, variables["params"]) ** 2))  # noqa: E731
    assert_close(jax.jit(second(ours))(x), second(flax_bn)(x), tol=1e-4)


def test_statistics_and_gradients_over_a_pmapped_axis_equal_nn_batchnorm():
    devices = 4  # of the 8 fake CPU devices tests/conftest.py sets up
    ours, flax_bn = _pair(axis_name="batch")
    x, variables = _inputs(shape=(devices * 2, 5, 5, 6), seed=2)
    x = x.reshape(devices, 2, 5, 5, 6)

    def step(module):
        def f(x):
            def loss(params):
                y, stats = module.apply(
                    {"params": params, "batch_stats": variables["batch_stats"]},
                    x,
                    use_running_average=False,
                    mutable=["batch_stats"],
                )
                return jnp.sum(jnp.sin(3 * y)), stats

            (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
            return value, stats, jax.lax.psum(grads, "batch")

        return jax.pmap(f, axis_name="batch", devices=jax.local_devices()[:devices])

    value, stats, grads = step(ours)(x)
    value_ref, stats_ref, grads_ref = step(flax_bn)(x)
    np.testing.assert_array_equal(value, value_ref)
    for key in ("mean", "var"):
        np.testing.assert_array_equal(stats["batch_stats"][key], stats_ref["batch_stats"][key])
    for key in ("scale", "bias"):
        assert_close(grads[key], grads_ref[key])
