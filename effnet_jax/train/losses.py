"""Classification losses on logits: softmax cross-entropy or sigmoid BCE, smoothing, per-class weights.

The generalized cross-entropy (Zhang & Sabuncu 2018, ``gce_q`` > 0) bounds each example's loss
by 1/q, so a training image with a wrong label pulls on the weights less than under
cross-entropy; q -> 0 is cross-entropy, q = 1 the mean absolute error of the probabilities.

The focal loss (Lin et al. 2017, ``focal_gamma`` > 0) scales each example's cross-entropy by
(1 - p_label)^gamma: the images a model already gets right with confidence pull less, the
ones it gets wrong or barely right pull more; gamma = 0 is cross-entropy.

The pairwise ranking loss (``pairwise_ranking_loss``) is the logistic surrogate of 1 - AUC over
the (positive, negative) pairs of a batch (RankNet, Burges et al. 2005): it pulls on the order
of the scores, which the AUC and a threshold chosen at high sensitivity read, not on their level.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def per_example_loss(
    logits: jax.Array,
    labels: jax.Array,
    label_smoothing: float = 0.0,
    gce_q: float = 0.0,
    focal_gamma: float = 0.0,
) -> jax.Array:
    """Loss of each example; a (B, 1) logit means sigmoid BCE, (B, C) softmax cross-entropy.

    ``gce_q`` > 0: the generalized cross-entropy sum_c t_c (1 - p_c^q) / q over the (smoothed)
    targets t instead. ``focal_gamma`` > 0: the focal loss sum_c t_c (1 - p_c)^gamma (-log p_c).
    """
    logits = logits.astype(jnp.float32)
    if gce_q:
        return _generalized_cross_entropy(logits, labels, label_smoothing, gce_q)
    if focal_gamma:
        return _focal(logits, labels, label_smoothing, focal_gamma)
    if logits.shape[-1] == 1:
        targets = labels.astype(jnp.float32)
        # Symmetric smoothing towards 0.5, the binary analogue of smoothing towards uniform.
        targets = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
        return optax.sigmoid_binary_cross_entropy(logits[:, 0], targets)
    onehot = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
        onehot = optax.smooth_labels(onehot, label_smoothing)
    return optax.softmax_cross_entropy(logits, onehot)


def _log_probs(logits) -> jax.Array:
    if logits.shape[-1] == 1:  # the two classes of a sigmoid head: log(1 - p) and log p
        return jnp.stack([jax.nn.log_sigmoid(-logits[:, 0]), jax.nn.log_sigmoid(logits[:, 0])], axis=-1)
    return jax.nn.log_softmax(logits)


def _focal(logits, labels, label_smoothing: float, gamma: float) -> jax.Array:
    log_probs = _log_probs(logits)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, log_probs.shape[-1]), label_smoothing)
    # 1 - p as -expm1(log p): exact for p near 1, where the factor is tiny.
    return jnp.sum(targets * (-jnp.expm1(log_probs)) ** gamma * -log_probs, axis=-1)


def _generalized_cross_entropy(logits, labels, label_smoothing: float, q: float) -> jax.Array:
    log_probs = _log_probs(logits)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, log_probs.shape[-1]), label_smoothing)
    # 1 - p^q computed as -expm1(q log p): exact for p near 1, where the loss is tiny.
    return jnp.sum(targets * -jnp.expm1(q * log_probs), axis=-1) / q


def weighted_mean_loss(
    logits, labels, weights=None, label_smoothing: float = 0.0, gce_q: float = 0.0, focal_gamma: float = 0.0
) -> jax.Array:
    """Mean over the batch of weight[label] * loss (Keras ``class_weight`` semantics).

    Dividing by the batch size, not the weight sum, keeps the loss of a global batch
    equal to the mean of its shards' losses, so jit and pmap agree.
    """
    losses = per_example_loss(logits, labels, label_smoothing, gce_q, focal_gamma)
    if weights is not None:
        losses = losses * jnp.asarray(weights)[labels]
    return jnp.mean(losses)


def binary_score(logits: jax.Array) -> jax.Array:
    """The positive class's score of a two-class head: the logit of a sigmoid head, logit_1 - logit_0 of a softmax head."""
    logits = logits.astype(jnp.float32)
    if logits.shape[-1] == 1:
        return logits[:, 0]
    if logits.shape[-1] != 2:
        raise ValueError(
            f"config.rank_loss_weight: the ranking loss needs two classes, the head has {logits.shape[-1]}"
        )
    return logits[:, 1] - logits[:, 0]


def pairwise_ranking_loss(logits: jax.Array, labels: jax.Array, axis_name: str | None = None) -> jax.Array:
    """Mean over every (label 1, label 0) pair of the batch of log(1 + exp(s_0 - s_1)); 0 without a pair.

    Under pmap (``axis_name`` set) the scores and labels of every device are gathered first, so
    the pairs span the global batch as they do under jit. Each device then holds the same loss;
    the gather's transpose sums the devices' copies of each score's gradient, and the pmean of
    the parameter gradients turns that sum back into the global batch's gradient.
    """
    scores = binary_score(logits)
    if axis_name is not None:
        scores = jax.lax.all_gather(scores, axis_name, tiled=True)
        labels = jax.lax.all_gather(labels, axis_name, tiled=True)
    positive = labels == 1
    pairs = positive[:, None] & ~positive[None, :]  # [i, j]: i positive, j negative
    margins = scores[None, :] - scores[:, None]  # [i, j]: s_j - s_i
    return jnp.sum(jnp.where(pairs, jax.nn.softplus(margins), 0.0)) / jnp.maximum(jnp.sum(pairs), 1)
