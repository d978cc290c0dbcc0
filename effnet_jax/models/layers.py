"""Convolution building blocks whose padding and depthwise formulation follow the weight source."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

Dtype = Any

# TF/Keras initialise convolutions from N(0, 2 / fan_out); timm does the same for its
# EfficientNets, so training from scratch behaves like the references.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv_padding(size: int, kernel: int, stride: int, mode: str) -> tuple[int, int]:
    """Returns (before, after) padding of one spatial dimension.

    ``same`` is TensorFlow's rule (asymmetric, depends on the input size), which
    TF-ported weights need; ``symmetric`` is PyTorch's ``(k - 1) // 2`` rule.
    """
    if mode == "same":
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2
    if mode == "symmetric":
        pad = ((stride - 1) + (kernel - 1)) // 2
        return pad, pad
    raise ValueError(f"Unknown padding mode {mode!r} (expected 'same' or 'symmetric').")


def spatial_padding(shape: Sequence[int], kernel: int, stride: int, mode: str) -> list[tuple[int, int]]:
    return [conv_padding(shape[1], kernel, stride, mode), conv_padding(shape[2], kernel, stride, mode)]


class Conv(nn.Module):
    """A bias-free (unless asked) 2-D convolution with source-specific padding."""

    features: int
    kernel_size: int = 1
    stride: int = 1
    padding: str = "symmetric"
    use_bias: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel", conv_kernel_init, (self.kernel_size, self.kernel_size, x.shape[-1], self.features), jnp.float32
        )
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if self.kernel_size == 1 and self.stride == 1:
            # A pointwise convolution is a matmul over channels; XLA's CPU convolution runs it
            # much slower forward and backward than its dot (docs/experiments/performance.md).
            y = pointwise_conv(x, kernel[0, 0])
        else:
            pad = spatial_padding(x.shape, self.kernel_size, self.stride, self.padding)
            y = jax.lax.conv_general_dilated(
                x, kernel, (self.stride, self.stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


def pointwise_conv(x, kernel):
    """A 1x1 convolution of NHWC ``x`` with a ``(C, D)`` kernel, as one matmul over channels.

    On CPU its kernel gradient is written so that XLA transposes the narrower operand (below);
    elsewhere autodiff's is used: GPU and TPU matmuls read transposed operands as they are.
    """
    if jax.default_backend() == "cpu":
        return _pointwise_cpu(x, kernel)
    return jnp.einsum("nhwc,cd->nhwd", x, kernel)


@jax.custom_vjp
def _pointwise_cpu(x, kernel):
    return jnp.einsum("nhwc,cd->nhwd", x, kernel)


def _pointwise_cpu_fwd(x, kernel):
    return _pointwise_cpu(x, kernel), (x, kernel)


def _pointwise_cpu_bwd(residuals, g):
    x, kernel = residuals
    c, d = kernel.shape
    dx = jnp.einsum("nhwd,cd->nhwc", g, kernel)
    # dK = x^T g sums over every pixel. XLA's CPU dot wants the summed axis last on its left
    # operand and copies that operand transposed; autodiff puts g there, which for an
    # expansion (C -> 6C) is the wide side: a transposed copy of a 6x larger tensor, fused
    # with the BatchNorm backward (14% of B0's train step). Put the narrower one there.
    x2, g2 = x.reshape(-1, c), g.reshape(-1, d)
    pixels = (((0,), (0,)), ((), ()))
    if c <= d:
        dk = jax.lax.dot_general(x2, g2, pixels, preferred_element_type=jnp.float32)
    else:
        dk = jax.lax.dot_general(g2, x2, pixels, preferred_element_type=jnp.float32).T
    return dx, dk.astype(kernel.dtype)


_pointwise_cpu.defvjp(_pointwise_cpu_fwd, _pointwise_cpu_bwd)


@jax.custom_vjp
def silu(x):
    """SiLU (swish), x * sigmoid(x), whose backward recomputes the sigmoid from x.

    Autodiff of ``nn.silu`` keeps sigmoid(x) as a residual: one more activation-sized
    tensor written in the forward pass and read in the backward, where recomputing it is
    nearly free (the pass is memory-bound); measured in docs/experiments/performance.md.
    """
    return x * jax.nn.sigmoid(x)


def _silu_fwd(x):
    return silu(x), x


def _silu_bwd(x, g):
    s = jax.nn.sigmoid(x)
    return (g * (s * (1 + x * (1 - s))),)


silu.defvjp(_silu_fwd, _silu_bwd)


def depthwise_init(key, shape, dtype=jnp.float32):
    # fan_out of a depthwise kernel is k * k (one output per input channel).
    return jax.random.normal(key, shape, dtype) * jnp.sqrt(2.0 / (shape[0] * shape[1])).astype(dtype)


def resolve_depthwise_impl(impl: str) -> str:
    """Picks the depthwise formulation: shifted slices on CPU, the native convolution elsewhere.

    On CPU, XLA's grouped convolution with one channel per group is an order of
    magnitude slower than PyTorch's (forward and backward); a sum of k*k shifted,
    per-channel-scaled slices runs at memory speed there. GPU and TPU have fast
    native depthwise kernels.
    """
    if impl == "auto":
        return "shifts" if jax.default_backend() == "cpu" else "native"
    if impl not in ("native", "shifts", "shifts_autodiff"):
        raise ValueError(f"depthwise_impl must be 'auto', 'native', 'shifts' or 'shifts_autodiff', got {impl!r}.")
    return impl


def depthwise_conv(x, kernel, stride: int, pad, impl: str):
    """Depthwise 2-D convolution of NHWC ``x`` with a ``(k, k, 1, C)`` kernel."""
    if impl == "native":
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            (stride, stride),
            pad,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=x.shape[-1],
        )
    pad = tuple(tuple(p) for p in pad)
    if impl == "shifts_autodiff":  # the slices differentiated by JAX; kept for benchmarks and tests
        return _shifts_forward(x, kernel, stride, pad)
    return _depthwise_shifts(x, kernel, stride, pad)


def _windows(x, k: int, stride: int, out_h: int, out_w: int, phases: bool = False):
    """The k*k shifted (and strided) views of padded ``x`` that output pixels read, row-major over the kernel.

    With ``phases`` a stride-s input is first split into its s*s phases (x[:, a::s, b::s]),
    so that every window is a unit-stride slice of one phase.
    """
    n, _, _, c = x.shape
    if stride == 1 or not phases:
        return [
            jax.lax.slice(
                x,
                (0, i, j, 0),
                (n, i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1, c),
                (1, stride, stride, 1),
            )
            for i in range(k)
            for j in range(k)
        ]
    split = {}
    out = []
    for i in range(k):
        for j in range(k):
            key = (i % stride, j % stride)
            if key not in split:
                split[key] = x[:, key[0] :: stride, key[1] :: stride, :]
            out.append(
                jax.lax.slice(
                    split[key], (0, i // stride, j // stride, 0), (n, i // stride + out_h, j // stride + out_w, c)
                )
            )
    return out


def _shifts_forward(x, kernel, stride: int, pad):
    """Depthwise convolution as a sum of k*k shifted, per-channel-scaled slices."""
    k = kernel.shape[0]
    x = jnp.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
    out_h = (x.shape[1] - k) // stride + 1
    out_w = (x.shape[2] - k) // stride + 1
    out = None
    for t, window in enumerate(_windows(x, k, stride, out_h, out_w)):
        term = window * kernel[t // k, t % k, 0]
        out = term if out is None else out + term
    return out


# Layers at most this many pixels high also reduce over rows, in chunks of at most
# ROW_REDUCE_CHUNK images (docs/experiments/performance.md, The depthwise kernel gradient).
ROW_REDUCE_MAX_SIZE = 28
ROW_REDUCE_CHUNK = 16


def _shifts_kernel_grad(x, g, k: int, stride: int, pad):
    """d(loss)/d(kernel) of the depthwise convolution, ``(k, k, 1, C)``, from input ``x`` and output gradient ``g``.

    dK[i, j, c] = sum_{n,h,w} xpad[n, i + s*h, j + s*w, c] * g[n, h, w, c]. Written as k*k
    separate sums (what autodiff of the slices gives), XLA's CPU backend copies every
    window out and reduces each in its own pass over the activations. Here one variadic
    reduce computes all k*k products from a single read of x and g (XLA emits it as one
    loop fusion), leaving partial sums that a second, much smaller reduction finishes.
    It reduces over the batch on large layers, leaving k*k (H, W, C) partial sums; on
    layers of at most ROW_REDUCE_MAX_SIZE pixels, where those partial sums would be as
    large as the activations, over the rows too, per chunk of at most ROW_REDUCE_CHUNK
    images (a whole batch of 32 at once ran 1.5-3x slower than two chunks of 16).
    """
    xp = jnp.pad(x, ((0, 0), pad[0], pad[1], (0, 0))).astype(jnp.float32)
    g = g.astype(jnp.float32)
    products = tuple(w * g for w in _windows(xp, k, stride, g.shape[1], g.shape[2], phases=True))
    axes = (0,)
    if x.shape[1] <= ROW_REDUCE_MAX_SIZE:
        n = g.shape[0]
        chunk = max(d for d in range(1, min(n, ROW_REDUCE_CHUNK) + 1) if n % d == 0)
        products = tuple(p.reshape(n // chunk, chunk, *p.shape[1:]) for p in products)
        axes = (1, 2)  # images of a chunk, and rows: leaves (chunks, W, C)
    zeros = tuple(jnp.zeros((), jnp.float32) for _ in products)
    partial = jnp.stack(jax.lax.reduce(products, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), axes))
    return jnp.sum(partial, axis=(1, 2)).reshape(k, k, 1, x.shape[-1])


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_shifts(x, kernel, stride: int, pad):
    return _shifts_forward(x, kernel, stride, pad)


def _depthwise_shifts_fwd(x, kernel, stride, pad):
    return _shifts_forward(x, kernel, stride, pad), (x, kernel)


# The input gradient as a correlation of the output gradient, spread out once (docs/experiments/
# performance.md, The depthwise input gradient); False: autodiff's, for benchmarks/ab_depthwise.py.
SPREAD_INPUT_GRAD = True


def _shifts_input_grad(g, kernel, stride: int, pad, in_h: int, in_w: int):
    """d(loss)/d(x) of the depthwise convolution (the transposed convolution), from output gradient ``g``.

    Autodiff of the slices sums k*k copies of the scaled gradient, each padded out to the
    input's size (with stride-1 zeros between pixels on strided layers); XLA fuses them into
    one loop that works out, for every input pixel and every tap, whether it falls on
    padding. Here the gradient is spread out once (zeros between pixels, then padded or
    cropped to the taps' reach), kept apart by an optimization barrier so that XLA does not
    fuse the padding back into every tap, and correlated with the flipped kernel as k*k
    plain stride-1 shifts (results/benchmarks_cpu.jsonl, change "input gradient spread once").
    """
    k = kernel.shape[0]
    (top, _), (left, _) = pad
    low_h, low_w = k - 1 - top, k - 1 - left
    spread_h, spread_w = stride * (g.shape[1] - 1) + 1, stride * (g.shape[2] - 1) + 1
    spread = jax.lax.pad(
        g,
        jnp.zeros((), g.dtype),
        (
            (0, 0, 0),
            (low_h, in_h + k - 1 - low_h - spread_h, stride - 1),
            (low_w, in_w + k - 1 - low_w - spread_w, stride - 1),
            (0, 0, 0),
        ),
    )
    spread = jax.lax.optimization_barrier(spread)
    return _shifts_forward(spread, kernel[::-1, ::-1], 1, ((0, 0), (0, 0)))


def _depthwise_shifts_bwd(stride, pad, residuals, g):
    x, kernel = residuals
    if SPREAD_INPUT_GRAD:
        dx = _shifts_input_grad(g, kernel, stride, pad, x.shape[1], x.shape[2])
    else:
        _, input_vjp = jax.vjp(lambda x_: _shifts_forward(x_, kernel, stride, pad), x)
        (dx,) = input_vjp(g)
    dk = _shifts_kernel_grad(x, g, kernel.shape[0], stride, pad)
    return dx, dk.astype(kernel.dtype)


_depthwise_shifts.defvjp(_depthwise_shifts_fwd, _depthwise_shifts_bwd)


class DepthwiseConv(nn.Module):
    """Depthwise convolution (one filter per channel), stored in flax's grouped-conv layout."""

    kernel_size: int
    stride: int = 1
    padding: str = "symmetric"
    impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        kernel = self.param("kernel", depthwise_init, (self.kernel_size, self.kernel_size, 1, channels), jnp.float32)
        pad = spatial_padding(x.shape, self.kernel_size, self.stride, self.padding)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        return depthwise_conv(x, kernel, self.stride, pad, resolve_depthwise_impl(self.impl))
