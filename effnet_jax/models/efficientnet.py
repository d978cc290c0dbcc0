"""EfficientNet (Tan & Le, 2019) and EfficientNet-Lite in flax.linen.

Module and parameter names mirror timm (``blocks_3_1/conv_dw/kernel`` is timm's
``blocks.3.1.conv_dw.weight``) so converted weights map by name and freezing
regexes read naturally.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import traverse_util

from effnet_jax.models.batch_norm import BatchNorm
from effnet_jax.models.layers import Conv, DepthwiseConv, silu
from effnet_jax.models.variants import BlockDef, VariantConfig, get_variant

Dtype = Any

ACTIVATIONS = {"swish": silu, "relu6": nn.relu6}


def batch_norm(
    name: str,
    x,
    train: bool,
    epsilon: float,
    momentum: float,
    frozen_patterns: tuple[str, ...],
    path: str,
    axis_name: str | None,
    dtype: Dtype,
):
    """BatchNorm with float32 statistics; a norm whose path matches a frozen pattern
    always uses (and never updates) its running statistics. On CPU the module is
    models/batch_norm.py's (same variables and values, a backward that stores less);
    GPU and TPU keep flax's."""
    frozen = any(re.search(p, path) for p in frozen_patterns)
    norm = BatchNorm if jax.default_backend() == "cpu" else nn.BatchNorm
    return norm(
        momentum=momentum,
        epsilon=epsilon,
        axis_name=axis_name,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )(x, use_running_average=not train or frozen)


class SqueezeExcite(nn.Module):
    """Channel attention: pool, bottleneck 1x1 convs, sigmoid gate."""

    reduced_channels: int
    activation: str
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)
        s = Conv(self.reduced_channels, use_bias=True, dtype=self.dtype, name="conv_reduce")(s)
        s = ACTIVATIONS[self.activation](s)
        s = Conv(channels, use_bias=True, dtype=self.dtype, name="conv_expand")(s)
        return x * nn.sigmoid(s)


class Block(nn.Module):
    """A depthwise-separable (``ds``) or inverted-residual (``ir``) block."""

    block: BlockDef
    activation: str
    padding: str
    bn_eps: float
    bn_momentum: float
    drop_path_rate: float = 0.0
    frozen_norms: tuple[str, ...] = ()
    bn_axis_name: str | None = None
    depthwise_impl: str = "auto"
    dtype: Dtype = jnp.float32

    def norm(self, name: str, x, train: bool):
        return batch_norm(
            name,
            x,
            train,
            self.bn_eps,
            self.bn_momentum,
            self.frozen_norms,
            f"{self.name}/{name}",
            self.bn_axis_name,
            self.dtype,
        )

    @nn.compact
    def __call__(self, x, train: bool):
        b = self.block
        act = ACTIVATIONS[self.activation]
        shortcut = x
        if b.block_type == "ir":
            x = Conv(b.mid_channels, padding=self.padding, dtype=self.dtype, name="conv_pw")(x)
            x = act(self.norm("bn1", x, train))
            dw_norm, se_name, out_conv, out_norm = "bn2", "se", "conv_pwl", "bn3"
        else:
            dw_norm, se_name, out_conv, out_norm = "bn1", "se", "conv_pw", "bn2"
        x = DepthwiseConv(b.kernel_size, b.stride, self.padding, self.depthwise_impl, self.dtype, name="conv_dw")(x)
        x = act(self.norm(dw_norm, x, train))
        if b.se_ratio > 0:
            x = SqueezeExcite(b.se_channels, self.activation, self.dtype, name=se_name)(x)
        x = Conv(b.out_channels, padding=self.padding, dtype=self.dtype, name=out_conv)(x)
        x = self.norm(out_norm, x, train)
        if b.has_skip:
            # Stochastic depth: drop the whole residual branch per example.
            x = nn.Dropout(self.drop_path_rate, broadcast_dims=(1, 2, 3))(x, deterministic=not train)
            x = x + shortcut
        return x


class EfficientNet(nn.Module):
    """An EfficientNet variant. Input: NHWC images normalised with the variant's mean/std.

    ``num_classes=1`` gives a single logit for a sigmoid head; ``num_classes=0``
    drops the classifier (the pooled features are returned).
    """

    variant: VariantConfig
    num_classes: int = 1000
    drop_rate: float | None = None  # None: the variant's own dropout
    drop_path_rate: float = 0.0
    frozen_norms: tuple[str, ...] = ()  # regexes over norm paths, e.g. "^blocks_[0-3]_"
    bn_axis_name: str | None = None  # set under pmap so statistics are global-batch
    depthwise_impl: str = "auto"
    dtype: Dtype = jnp.float32

    def norm(self, name: str, x, train: bool):
        v = self.variant
        return batch_norm(
            name, x, train, v.bn_eps, v.bn_momentum, self.frozen_norms, name, self.bn_axis_name, self.dtype
        )

    @nn.compact
    def __call__(self, x, train: bool = False, features_only: bool = False):
        """Returns logits, or with ``features_only`` a dict of feature maps and pooled features."""
        v = self.variant
        act = ACTIVATIONS[v.activation]
        features: dict[str, Any] = {}
        x = x.astype(self.dtype)
        x = Conv(v.scaled_stem(), 3, 2, v.padding, dtype=self.dtype, name="conv_stem")(x)
        x = act(self.norm("bn1", x, train))
        features["stem"] = x
        stages = v.block_defs()
        total = sum(len(s) for s in stages)
        index = 0
        for stage in stages:
            for b in stage:
                x = Block(
                    b,
                    v.activation,
                    v.padding,
                    v.bn_eps,
                    v.bn_momentum,
                    drop_path_rate=self.drop_path_rate * index / total,
                    frozen_norms=self.frozen_norms,
                    bn_axis_name=self.bn_axis_name,
                    depthwise_impl=self.depthwise_impl,
                    dtype=self.dtype,
                    name=f"blocks_{b.stage}_{b.index}",
                )(x, train)
                index += 1
            features[f"stage_{stage[0].stage}"] = x
        x = Conv(v.scaled_head(), padding=v.padding, dtype=self.dtype, name="conv_head")(x)
        x = act(self.norm("bn2", x, train))
        # Grad-CAM reads the gradient of a logit with respect to this map.
        x = self.perturb("head_features", x)
        features["head"] = x
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        features["pooled"] = pooled
        if features_only:
            return features
        if self.num_classes == 0:
            return pooled
        drop = v.dropout if self.drop_rate is None else self.drop_rate
        x = nn.Dropout(drop)(pooled.astype(self.dtype), deterministic=not train)
        x = nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.initializers.variance_scaling(1.0 / 3, "fan_out", "uniform"),
            name="classifier",
        )(x)
        return x.astype(jnp.float32)


def build_model(name: str, num_classes: int = 1000, **kwargs) -> EfficientNet:
    """Builds the (uninitialised) module for a variant name such as ``tf_efficientnet_b2``."""
    return EfficientNet(get_variant(name), num_classes=num_classes, **kwargs)


def _init_fn(model: EfficientNet, image_size: int):
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    # The depthwise formulation changes only the arithmetic, not the variables; the native
    # one compiles several times faster on CPU.
    init_model = model.clone(depthwise_impl="native")

    def init(rng):
        variables = init_model.init(rng, dummy, train=False)
        # The zero "perturbations" that Grad-CAM differentiates against are not state.
        return {k: v for k, v in variables.items() if k in ("params", "batch_stats")}

    return init


def _key(rng: jax.Array | int) -> jax.Array:
    return jax.random.PRNGKey(rng) if isinstance(rng, int) else rng


def init_variables(model: EfficientNet, rng: jax.Array | int = 0, image_size: int = 64) -> dict:
    """Initialises ``params`` and ``batch_stats`` (shapes do not depend on the image size)."""
    return jax.jit(_init_fn(model, image_size))(_key(rng))


def variable_shapes(model: EfficientNet) -> dict:
    """``init_variables``' tree of ``jax.ShapeDtypeStruct``s, traced without compiling anything."""
    return jax.eval_shape(_init_fn(model, 64), jax.random.PRNGKey(0))


def init_some_variables(model: EfficientNet, keys, rng: jax.Array | int = 0) -> dict:
    """``{flattened key: value}`` for ``keys`` alone, each equal to ``init_variables``' value.

    The program computes only what those keys need (XLA drops the rest), so a model whose
    other arrays come from a weight file does not compile its whole initialisation.
    """
    keys = [tuple(k) for k in keys]
    init = _init_fn(model, 64)

    def some(rng):
        flat = traverse_util.flatten_dict(init(rng))
        return [flat[k] for k in keys]

    return dict(zip(keys, jax.jit(some)(_key(rng))))
