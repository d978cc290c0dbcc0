"""The train state (a plain pytree) and building the model a config describes."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct

from effnet_jax.factory import create_model
from effnet_jax.models import get_variant
from effnet_jax.runs.model import model_kwargs, num_classes


@struct.dataclass
class TrainState:
    """Everything a step changes. Model and optimizer live outside so the state checkpoints as data.

    ``ema_params`` / ``ema_batch_stats`` are None when ``config.ema_decay == 0``.
    ``rng`` is the run's base key; each step folds in its step number, so the
    dropout masks of step N do not depend on how many times the run was resumed.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any
    ema_batch_stats: Any
    rng: jax.Array


def image_size(config: ml_collections.ConfigDict) -> int:
    """The training/eval image size: ``config.image_size`` or the variant's native resolution."""
    if config.get("image_size"):
        return int(config.image_size)
    return get_variant(config.model.name).resolution


def model_from_config(config: ml_collections.ConfigDict, frozen_norms=(), bn_axis_name=None, load_weights=True):
    """``factory.create_model`` for ``config.model``: ``(model, variables)``, with ``config.model.pretrained``
    loaded unless ``load_weights`` is False. The model carries the weights' input mean/std."""
    return create_model(
        config.model.name,
        num_classes=num_classes(config),
        pretrained=config.model.pretrained if load_weights else None,
        rng=config.seed,
        **model_kwargs(config, frozen_norms, bn_axis_name),
    )


def zero_head(variables: dict) -> dict:
    """Variables with the classifier's kernel and bias set to zero.

    A fresh 2-way head initialised like timm's 1000-way one gives logits in the
    tens at step 0; starting from zero logits (loss ln 2) lets fine-tuning begin
    from the pretrained features instead of first undoing a random head.
    """
    params = dict(variables["params"])
    if "classifier" in params:
        params["classifier"] = jax.tree.map(jnp.zeros_like, params["classifier"])
    return {**variables, "params": params}


def create_train_state(variables: dict, tx, config: ml_collections.ConfigDict) -> TrainState:
    """A step-0 state from model variables and an optax transformation."""
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    use_ema = config.ema_decay > 0
    # Copies, not aliases: the EMA buffers are donated separately from the params.
    copy = lambda t: jax.tree.map(jnp.array, t)  # noqa: E731
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        ema_params=copy(params) if use_ema else None,
        ema_batch_stats=copy(batch_stats) if use_ema else None,
        rng=jax.random.PRNGKey(config.seed + 1),
    )
