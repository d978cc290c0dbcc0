"""The optax transformation a config describes: optimizer, schedule, clipping, accumulation, freezing."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

from effnet_jax.train import freeze


def create_schedule(config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int):
    """Learning rate per optimizer step: linear warmup, then cosine, step or constant."""
    s = config.schedule
    peak = config.optimizer.learning_rate
    warmup = int(round(s.warmup_epochs * steps_per_epoch))
    warmup = min(warmup, max(total_steps - 1, 0))
    if s.name == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, peak, warmup, max(total_steps, warmup + 1), end_value=peak * s.min_lr_ratio
        )
    if s.name == "step":
        # TF EfficientNet style: multiply by decay_rate every decay_epochs, staircase.
        decay = optax.exponential_decay(
            peak, max(1, int(round(s.decay_epochs * steps_per_epoch))), s.decay_rate, staircase=True
        )
    elif s.name == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise ValueError(f"config.schedule.name={s.name!r}: expected 'cosine', 'step' or 'constant'")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def _decay_mask(params):
    # Kernels only: BatchNorm scales/biases and dense/conv biases are 1-D.
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _pretrained_mask(params):
    # Every pretrained weight: all but the classifier, which is new to the task (it starts at
    # zero). Anchoring it near its start would only shrink the logits; holding it during a
    # linear probe would leave nothing to train.
    return {name: jax.tree.map(lambda _: name != "classifier", tree) for name, tree in params.items()}


class AnchorState(NamedTuple):
    anchor: Any  # the parameters the optimizer was initialised with


def decay_toward_start(rate: float, mask=None) -> optax.GradientTransformation:
    """Adds ``rate * (p - p0)`` to each update, ``p0`` being ``p`` at ``init``: weight decay toward
    the pretrained weights instead of toward zero (L2-SP, Li et al. 2018).

    ``p0`` lives in the optimizer state, so it is checkpointed with it and a resumed run keeps
    the weights it started from. ``mask`` (a callable or bool pytree) limits it to some leaves.
    """

    def init_fn(params):
        return AnchorState(anchor=jax.tree.map(jnp.array, params))  # a copy: params are donated

    def update_fn(updates, state, params):
        if params is None:
            raise ValueError("decay_toward_start needs the params")
        updates = jax.tree.map(lambda u, p, p0: u + rate * (p - p0), updates, params, state.anchor)
        return updates, state

    tx = optax.GradientTransformation(init_fn, update_fn)
    return optax.masked(tx, mask) if mask is not None else tx


class HoldState(NamedTuple):
    count: jax.Array  # optimizer steps taken so far


def hold_for(steps: int, mask=None) -> optax.GradientTransformation:
    """Zeroes the updates for the first ``steps`` optimizer steps, then passes them through.

    Placed after the optimizer, it holds the weights still while the optimizer's moments keep
    seeing their gradients (and decoupled weight decay, already in the update, is held too).
    ``mask`` (a callable or bool pytree) limits it to some leaves.
    """

    def init_fn(params):
        del params
        return HoldState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        moving = state.count >= steps
        updates = jax.tree.map(lambda u: jnp.where(moving, u, jnp.zeros_like(u)), updates)
        return updates, HoldState(count=optax.safe_int32_increment(state.count))

    tx = optax.GradientTransformation(init_fn, update_fn)
    return optax.masked(tx, mask) if mask is not None else tx


def probe_steps(config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int) -> int:
    """Optimizer steps of the linear probe that opens the run (``config.optimizer.probe_epochs``); 0 = none."""
    epochs = float(config.optimizer.get("probe_epochs", 0.0))
    steps = int(round(epochs * steps_per_epoch))
    if epochs and not 0 < steps < total_steps:
        raise ValueError(
            f"config.optimizer.probe_epochs={epochs!r}: {steps} optimizer steps of the run's {total_steps}; "
            "the probe needs at least one and must leave at least one to fine-tune"
        )
    return steps


def _base_optimizer(o: ml_collections.ConfigDict, schedule) -> optax.GradientTransformation:
    anchor_decay = float(o.get("anchor_decay", 0.0))
    if o.name in ("adamw", "adam") and anchor_decay:
        # Decoupled, as AdamW's own decay: added after Adam's scaling, multiplied by the rate.
        return optax.chain(
            optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps),
            optax.add_decayed_weights(o.weight_decay if o.name == "adamw" else 0.0, mask=_decay_mask),
            decay_toward_start(anchor_decay, mask=_pretrained_mask),
            optax.scale_by_learning_rate(schedule),
        )
    if o.name == "adamw":
        return optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=_decay_mask)
    if o.name == "adam":
        return optax.adam(schedule, b1=o.b1, b2=o.b2, eps=o.eps)
    # SGD and RMSprop take L2-style decay on the gradient, as in their TF/timm recipes.
    decay = optax.add_decayed_weights(o.weight_decay, mask=_decay_mask) if o.weight_decay else optax.identity()
    if anchor_decay:
        decay = optax.chain(decay, decay_toward_start(anchor_decay, mask=_pretrained_mask))
    if o.name == "sgd":
        return optax.chain(decay, optax.sgd(schedule, momentum=o.momentum or None, nesterov=o.nesterov))
    if o.name == "rmsprop":
        # TF's RMSprop: mean square starts at 1, epsilon inside the square root.
        return optax.chain(
            decay,
            optax.rmsprop(
                schedule,
                decay=o.rmsprop_decay,
                eps=o.eps,
                initial_scale=1.0,
                eps_in_sqrt=True,
                momentum=o.momentum or None,
            ),
        )
    raise ValueError(f"config.optimizer.name={o.name!r}: expected 'adamw', 'adam', 'sgd' or 'rmsprop'")


def layer_lr_scales(params, decay: float):
    """Per-parameter learning-rate multipliers: ``decay ** depth``, counted back from the classifier.

    Layers are the network's top-level modules in forward order (stem, each block, head,
    classifier); the classifier gets 1, the layer before it ``decay``, the one before that
    ``decay**2``, and so on down to the stem. Early layers, whose ImageNet features are the
    most general, move least (layer-wise learning-rate decay, as BEiT and timm fine-tune).
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"config.optimizer.layer_decay={decay!r}: expected a number in (0, 1]; 1 = off")
    flat = freeze.flat_paths(params)
    positions = sorted({freeze.module_position(p.split("/")[0]) for p in flat})
    depth = {pos: len(positions) - 1 - i for i, pos in enumerate(positions)}
    scales = {p: decay ** depth[freeze.module_position(p.split("/")[0])] for p in flat}
    return traverse_util.unflatten_dict(scales, sep="/")


def scale_by_tree(scales) -> optax.GradientTransformation:
    """Multiplies each update by its own constant from ``scales`` (a pytree like the params)."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s, updates, scales), state  # Python floats keep u's dtype

    return optax.GradientTransformation(init_fn, update_fn)


def create_optimizer(config: ml_collections.ConfigDict, frozen, total_steps: int, steps_per_epoch: int):
    """Returns ``(tx, schedule)``; ``frozen`` is the bool pytree from ``freeze.frozen_mask``.

    ``config.optimizer.layer_decay`` < 1 scales each layer's updates by ``layer_lr_scales``:
    its learning rate and, for AdamW, its decoupled weight decay (which optax multiplies by
    the learning rate), as a per-layer learning rate does in timm. The schedule logged is the
    classifier's.

    ``config.optimizer.probe_epochs`` > 0 opens the run with a linear probe: for that many
    epochs every pretrained weight is held (``hold_for``) while the classifier trains at
    ``probe_learning_rate``; then the schedule runs over the remaining steps for all of them.

    ``total_steps`` counts train steps (micro-batches); with gradient accumulation
    the optimizer (and its schedule) steps once every ``grad_accum_steps``.
    """
    o = config.optimizer
    accum = max(1, int(o.grad_accum_steps))
    opt_steps, opt_steps_per_epoch = max(1, total_steps // accum), max(1, steps_per_epoch // accum)
    probe = probe_steps(config, opt_steps, opt_steps_per_epoch)
    schedule = create_schedule(config, opt_steps - probe, opt_steps_per_epoch)
    if probe:
        # Linear probe, then fine-tuning (LP-FT, Kumar et al. 2022): the classifier first learns
        # on features that do not move, so fine-tuning starts from a fitted head instead of
        # distorting the pretrained features to suit a random one. The fine-tuning schedule
        # (warmup included) starts when the probe ends.
        probe_lr = float(o.get("probe_learning_rate", 0.0)) or o.learning_rate
        schedule = optax.join_schedules([optax.constant_schedule(probe_lr), schedule], [probe])
    train = _base_optimizer(o, schedule)
    if probe:
        train = optax.chain(train, hold_for(probe, mask=_pretrained_mask))
    if o.grad_clip_norm:
        # Clip inside the trainable branch: frozen gradients do not count toward the norm.
        train = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), train)
    if accum > 1:
        train = optax.MultiSteps(train, every_k_schedule=accum)
    # multi_transform hands each branch only its own leaves, so frozen parameters
    # carry no optimizer state at all (set_to_zero has none).
    labels = jax.tree.map(lambda f: "frozen" if f else "train", frozen)
    tx = optax.multi_transform({"train": train, "frozen": optax.set_to_zero()}, labels)
    layer_decay = float(o.get("layer_decay", 1.0))
    if layer_decay != 1.0:
        # Outside multi_transform, whose branches see only their own leaves; frozen updates are 0.
        tx = optax.chain(tx, scale_by_tree(layer_lr_scales(frozen, layer_decay)))
    return tx, schedule


def learning_rate(schedule, step: int, grad_accum_steps: int) -> float:
    """The learning rate in effect at train step ``step``, for logging."""
    return float(schedule(step // max(1, int(grad_accum_steps))))
