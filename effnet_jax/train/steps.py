"""One pure train step and one pure eval step; parallel.py compiles them with jit or pmap."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from effnet_jax.data import augment as augment_lib
from effnet_jax.labels import class_probabilities
from effnet_jax.train import losses
from effnet_jax.train.state import TrainState

# Folded into a step's key for the augmentation and mixup draws (dropout keeps the step's key itself).
AUGMENT_STREAM = 0xA06
MIXUP_STREAM = 0xA07


def _keep_frozen(frozen, old, new):
    # Frozen leaves are taken from `old` untouched: p + 0.0 would turn a -0.0 into
    # +0.0, and an EMA of a constant is not bitwise the constant.
    return jax.tree.map(lambda f, o, n: o if f else n, frozen, old, new)


def ema_decay_at(decay: float, step):
    """EMA decay ramped up over the first steps, so early averages are not dominated by init."""
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def bound_train_step(config, *, model, tx, frozen, class_weights=None, **options):
    """``train_step`` with a run's model, optimizer and loss settings bound: f(state, batch).

    effnet-train and the benchmarks build their step here, so a benchmark times the step a
    run compiles. ``options`` (augment, mean, std, ...) go to ``train_step`` as they are.
    """
    return functools.partial(
        train_step,
        model=model,
        tx=tx,
        frozen=frozen,
        class_weights=class_weights,
        label_smoothing=config.label_smoothing,
        gce_q=config.get("gce_q", 0.0),
        focal_gamma=config.get("focal_gamma", 0.0),
        ema_decay=config.ema_decay,
        mixup_alpha=config.get("mixup_alpha", 0.0),
        sam_rho=config.optimizer.get("sam_rho", 0.0),
        rank_loss_weight=config.get("rank_loss_weight", 0.0),
        **options,
    )


def train_step(
    state: TrainState,
    batch: dict,
    *,
    model,
    tx: optax.GradientTransformation,
    frozen: Any,
    class_weights=None,
    label_smoothing: float = 0.0,
    gce_q: float = 0.0,
    focal_gamma: float = 0.0,
    ema_decay: float = 0.0,
    axis_name: str | None = None,
    stop_frozen_gradients: bool = True,
    augment: augment_lib.AugmentSpec | None = None,
    mean=None,
    std=None,
    mixup_alpha: float = 0.0,
    sam_rho: float = 0.0,
    rank_loss_weight: float = 0.0,
) -> tuple[TrainState, dict]:
    """One optimizer update on a batch; returns the new state and scalar metrics.

    The batch carries either 'gray', uint8 (B, H, W) images resized once, which are
    augmented per ``augment`` and normalised with ``mean``/``std`` here, on the device
    (every example's draws from this step's key and its position in the global batch), or
    'image', float32 (B, H, W, 3) model input used as it is.

    Frozen parameters enter the forward pass through ``stop_gradient`` (unless
    ``stop_frozen_gradients=False``, kept for benchmarks): autodiff then builds no
    backward pass below the first trainable layer at all. Without it, jit's dead-code
    elimination already removed that backward pass before XLA saw it (the compiled step
    of configs/pneumonia_lite0.py is the same HLO either way), but only because nothing
    reads the frozen gradients; with it, that holds by construction and the traced step
    is about 30% smaller (faster tracing on a cold start). Frozen gradients are zeros.

    ``mixup_alpha`` > 0 blends each image with its partner (see ``mixup_partners``) by one
    lam ~ Beta(alpha, alpha) per step, and the loss of the two labels by the same lam.

    ``sam_rho`` > 0 takes a sharpness-aware step (SAM, Foret et al. 2021): the gradient is
    taken again at the weights moved ``sam_rho`` along the normalised (global, across
    devices) gradient of the trainable parameters, on the same images and dropout masks, and
    that second gradient is the one the optimizer sees. The loss, accuracy and BatchNorm
    statistics reported and kept are the first pass's, at the weights themselves.

    ``rank_loss_weight`` > 0 adds that times the pairwise ranking loss over the global batch's
    (pneumonia, normal) pairs (``losses.pairwise_ranking_loss``) to the classification loss.

    Under pmap (``axis_name`` set) gradients and metrics are averaged across
    devices and ``model`` must carry the same ``bn_axis_name``; under jit the batch
    is one global array and XLA inserts the same reductions.
    """
    rng = jax.random.fold_in(state.rng, state.step)
    images = batch.get("image")
    if images is None:
        # Before the per-device fold below: the draws must not depend on the device count.
        first = 0 if axis_name is None else jax.lax.axis_index(axis_name) * batch["gray"].shape[0]
        images = augment_lib.prepare_batch(
            batch["gray"], jax.random.fold_in(rng, AUGMENT_STREAM), augment, mean, std, first, batch["label"]
        )
    labels = batch["label"]
    if mixup_alpha:
        # lam is drawn before the per-device fold: every shard blends by the same amount.
        lam = jax.random.beta(jax.random.fold_in(rng, MIXUP_STREAM), mixup_alpha, mixup_alpha)
        partners = mixup_partners(images.shape[0])
        images = lam * images + (1.0 - lam) * images[partners]
    if axis_name is not None:
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

    def loss_fn(params):
        if stop_frozen_gradients:
            params = jax.tree.map(lambda f, p: jax.lax.stop_gradient(p) if f else p, frozen, params)
        variables = {"params": params, "batch_stats": state.batch_stats}
        logits, new_vars = model.apply(variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": rng})
        loss = losses.weighted_mean_loss(logits, labels, class_weights, label_smoothing, gce_q, focal_gamma)
        if mixup_alpha:
            partner_loss = losses.weighted_mean_loss(
                logits, labels[partners], class_weights, label_smoothing, gce_q, focal_gamma
            )
            loss = lam * loss + (1.0 - lam) * partner_loss
        if rank_loss_weight:
            loss = loss + rank_loss_weight * losses.pairwise_ranking_loss(logits, labels, axis_name)
        return loss, (logits, new_vars["batch_stats"])

    def mean_over_devices(grads):
        if axis_name is None:
            return grads
        return jax.tree.map(
            lambda f, g: g if f and stop_frozen_gradients else jax.lax.pmean(g, axis_name), frozen, grads
        )

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = mean_over_devices(grads)
    if sam_rho:
        grads = mean_over_devices(jax.grad(lambda p: loss_fn(p)[0])(sam_ascent(state.params, grads, frozen, sam_rho)))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = _keep_frozen(frozen, state.params, optax.apply_updates(state.params, updates))

    ema_params, ema_batch_stats = state.ema_params, state.ema_batch_stats
    if ema_params is not None:
        d = ema_decay_at(ema_decay, state.step)
        ema_params = _keep_frozen(frozen, ema_params, optax.incremental_update(params, ema_params, 1.0 - d))
        # Frozen norms never update their statistics, so their EMA equals them already.
        ema_batch_stats = jax.tree.map(
            lambda e, b: jnp.where(e == b, e, d * e + (1.0 - d) * b), ema_batch_stats, batch_stats
        )

    trainable_grads = jax.tree.map(lambda f, g: jnp.zeros_like(g) if f else g, frozen, grads)
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(_predict(logits) == batch["label"]),
        "grad_norm": optax.tree.norm(trainable_grads),
    }
    if axis_name is not None:
        metrics = jax.lax.pmean(metrics, axis_name)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        ema_params=ema_params,
        ema_batch_stats=ema_batch_stats,
    )
    return new_state, metrics


def sam_ascent(params, grads, frozen, rho: float):
    """``params`` moved ``rho`` along the unit gradient of the trainable leaves (frozen ones stay)."""
    trainable = jax.tree.map(lambda f, g: jnp.zeros_like(g) if f else g, frozen, grads)
    scale = rho / (optax.tree.norm(trainable) + 1e-12)
    return jax.tree.map(lambda f, p, g: p if f else p + scale * g, frozen, params, trainable)


def mixup_partners(batch_size: int) -> jax.Array:
    """Index of each example's mixup partner: its neighbour, (0, 1), (2, 3), ...

    The batch is shuffled already, so neighbours are a random pairing; unlike a permutation
    of the whole batch, a pair never spans two devices' shards (of even size), which keeps
    a pmapped step equal to the jitted one. An odd last example is its own partner.
    """
    return jnp.minimum(jnp.arange(batch_size) ^ 1, batch_size - 1)


def resident_train_step(state: TrainState, batch: dict, images, *, step_fn=train_step, **kwargs):
    """``step_fn`` on rows ``batch['index']`` of ``images``, the resident (N, H, W) uint8 training set."""
    gray = jnp.take(images, batch["index"], axis=0)
    return step_fn(state, {"gray": gray, "label": batch["label"]}, **kwargs)


def _predict(logits):
    if logits.shape[-1] == 1:
        return (logits[:, 0] > 0).astype(jnp.int32)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def eval_step(variables: dict, batch: dict, *, model) -> dict:
    """Per-example probability of pneumonia (of each class, past two) and unweighted loss (padding included; the mask drops it later)."""
    logits = model.apply(variables, batch["image"], train=False)
    return {
        "prob": class_probabilities(logits),
        "loss": losses.per_example_loss(logits, batch["label"]),
    }
