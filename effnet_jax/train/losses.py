"""Classification losses on logits: softmax cross-entropy or sigmoid BCE, smoothing, per-class weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def per_example_loss(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Loss of each example; a (B, 1) logit means sigmoid BCE, (B, C) softmax cross-entropy."""
    logits = logits.astype(jnp.float32)
    if logits.shape[-1] == 1:
        targets = labels.astype(jnp.float32)
        # Symmetric smoothing towards 0.5, the binary analogue of smoothing towards uniform.
        targets = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
        return optax.sigmoid_binary_cross_entropy(logits[:, 0], targets)
    onehot = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
        onehot = optax.smooth_labels(onehot, label_smoothing)
    return optax.softmax_cross_entropy(logits, onehot)


def weighted_mean_loss(logits, labels, weights=None, label_smoothing: float = 0.0) -> jax.Array:
    """Mean over the batch of weight[label] * loss (Keras ``class_weight`` semantics).

    Dividing by the batch size, not the weight sum, keeps the loss of a global batch
    equal to the mean of its shards' losses, so jit and pmap agree.
    """
    losses = per_example_loss(logits, labels, label_smoothing)
    if weights is not None:
        losses = losses * jnp.asarray(weights)[labels]
    return jnp.mean(losses)
