"""BatchNorm for the CPU train step: flax's variables and numbers, a backward that stores no normalised copy.

Autodiff of flax's ``nn.BatchNorm`` keeps ``x - mean`` for the backward, so XLA's CPU
backend writes that activation-sized tensor out in the forward pass and reads it back in
the backward: one extra memory pass per norm, on a step that is memory-bound. Here the
normalisation is a ``jax.custom_vjp`` whose residual is the input itself (already stored:
it is the convolution's output) and whose backward recomputes the normalised value in the
same pass that reads the gradient (measured: results/benchmarks_cpu.jsonl, change "CPU BatchNorm").

The module has nn.BatchNorm's parameters (``scale``, ``bias``) and statistics
(``batch_stats/mean``, ``var``), computes the statistics the same way (float32, E[x^2] -
E[x]^2, one ``pmean`` under ``axis_name``, running averages not updated while
initialising) and the same forward values; tests check values, statistics and gradients
against nn.BatchNorm.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

Dtype = Any


@partial(jax.custom_vjp, nondiff_argnums=(5,))
def normalize(x, mean, var, scale, bias, epsilon: float):
    """(x - mean) / sqrt(var + epsilon) * scale + bias over the last axis, in nn.BatchNorm's operation order."""
    return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias


def _normalize_fwd(x, mean, var, scale, bias, epsilon):
    return normalize(x, mean, var, scale, bias, epsilon), (x, mean, var, scale)


def _normalize_bwd(epsilon, residuals, g):
    x, mean, var, scale = residuals
    axes = tuple(range(x.ndim - 1))
    inv = jax.lax.rsqrt(var + epsilon)
    # Behind the barrier XLA cannot merge this x - mean with the forward's (and store that
    # as a tensor after all); x is stored anyway (a convolution's output).
    x, mean = jax.lax.optimization_barrier((x, mean))
    x_hat = (x - mean) * inv
    d_bias = jnp.sum(g, axes)
    d_scale = jnp.sum(g * x_hat, axes)
    d_x = g * (scale * inv)
    # The statistics' own backward (mean and var are functions of x) is autodiff's, outside.
    d_mean = -d_bias * scale * inv
    d_var = -0.5 * d_scale * scale * inv * inv
    return d_x, d_mean, d_var, d_scale, d_bias


normalize.defvjp(_normalize_fwd, _normalize_bwd)


class BatchNorm(nn.Module):
    """Drop-in for ``nn.BatchNorm`` over the last axis (same variables, same forward), with ``normalize``'s backward."""

    momentum: float = 0.99
    epsilon: float = 1e-5
    axis_name: str | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, use_running_average: bool):
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
        scale = self.param("scale", nn.initializers.ones, features, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, features, self.param_dtype)
        out_dtype = self.dtype or jnp.result_type(x, scale, bias)
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            mean, mean_sq = jnp.mean(x, axes), jnp.mean(jnp.square(x), axes)
            if self.axis_name is not None and not self.is_initializing():
                mean, mean_sq = jax.lax.pmean(jnp.stack([mean, mean_sq]), self.axis_name)
            var = jnp.maximum(0.0, mean_sq - jnp.square(mean))  # rounding can make it slightly negative
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return normalize(x, mean, var, scale, bias, self.epsilon).astype(out_dtype)
