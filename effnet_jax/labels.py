"""Class names, metric names, P(positive) from logits and class weights: the one home of each.

Class 1 is the positive class (PNEUMONIA) everywhere: data sets, heads, metrics, plots.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import expit

CLASS_NAMES = ("NORMAL", "PNEUMONIA")
POSITIVE = 1  # index of PNEUMONIA in CLASS_NAMES and of its logit in a softmax head

# Threshold metrics of a binary classifier, in the order tables show them.
METRIC_NAMES = ("accuracy", "auc", "precision", "recall", "specificity", "f1", "brier", "ece")


def positive_probability(logits: jax.Array) -> jax.Array:
    """P(class 1) from a sigmoid head ``(B, 1)`` or a softmax head ``(B, 2)``, in float32 (traceable)."""
    if logits.ndim != 2 or logits.shape[-1] not in (1, 2):
        raise ValueError(f"positive_probability: expected logits of shape (B, 1) or (B, 2), got {logits.shape}.")
    logits = logits.astype(jnp.float32)
    if logits.shape[-1] == 1:
        return jax.nn.sigmoid(logits[:, 0])
    return jax.nn.softmax(logits, axis=-1)[:, 1]


def probs_from_logits(logits) -> np.ndarray:
    """P(class 1) from ``(B,)``, ``(B, 1)`` or ``(B, 2)`` logits, on the host in float64.

    One logit is a sigmoid head; two logits are a softmax head whose class 1 is
    positive. Computed in float64 so that confident logits do not round to 0 or 1
    early and ties in the ROC stay as rare as the model makes them.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
        return expit(logits.reshape(-1))  # overflow-free sigmoid
    if logits.ndim == 2 and logits.shape[1] == 2:
        # softmax[:, 1] == sigmoid(z1 - z0), stable for large logits.
        return probs_from_logits(logits[:, 1] - logits[:, 0])
    raise ValueError(
        f"probs_from_logits: expected logits of shape (B,), (B, 1) or (B, 2), got {logits.shape}; "
        "a binary head has one sigmoid logit or two softmax logits."
    )


def class_weights(spec: str | None, class_counts: Sequence[int] | None) -> np.ndarray | None:
    """Per-class loss weights for ``config.class_weights``: 'none', 'balanced' or 'W0,W1'.

    'balanced' is scikit-learn's n_samples / (n_classes * count_c), so the weighted
    classes contribute equally to the loss.
    """
    if spec in (None, "", "none"):
        return None
    if spec == "balanced":
        if not class_counts or min(class_counts) <= 0:
            raise ValueError(f"config.class_weights='balanced' needs both classes present, got counts {class_counts}")
        counts = np.asarray(class_counts, np.float64)
        return (counts.sum() / (len(counts) * counts)).astype(np.float32)
    try:
        weights = np.asarray([float(v) for v in str(spec).split(",")], np.float32)
    except ValueError:
        weights = np.zeros(0)
    if weights.shape != (2,):
        raise ValueError(f"config.class_weights={spec!r}: expected 'none', 'balanced' or 'W_NORMAL,W_PNEUMONIA'")
    return weights
