"""Class names, metric names, P(positive) from logits and class weights: the one home of each.

Class 1 is the positive class (PNEUMONIA) everywhere a task has two classes: data sets,
heads, metrics, plots. A task of its own (``data.name='folder'``, docs/your-own-task.md)
names its classes in ``data.class_names``; with more than two there is no positive
class, and probabilities come one per class.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import expit, softmax

CLASS_NAMES = ("NORMAL", "PNEUMONIA")
POSITIVE = 1  # index of PNEUMONIA in CLASS_NAMES and of its logit in a softmax head
# A task's classes: at least two, at most this many, each a name that is safe as a folder,
# a file-name part, a CSV header and a JSON key (letters, digits, '_', '-', '.', '+').
MAX_CLASSES = 100
_CLASS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


def check_class_name(name, where: str) -> str:
    """``name``, or one ValueError line naming ``where`` when it is not a safe class (or folder) name."""
    if not isinstance(name, str) or not _CLASS_NAME.match(name):
        raise ValueError(
            f"{where}: name {reprlib.repr(name)} is not allowed; expected letters, digits, '_', '-', '.' or '+' "
            "(up to 64, starting with a letter or digit)"
        )
    return name


def validate_class_names(names, where: str) -> tuple[str, ...]:
    """``names`` as a tuple, or one ValueError line naming ``where`` and what was expected."""
    names = tuple(names)
    for n in names:
        check_class_name(n, where)
    if not 2 <= len(names) <= MAX_CLASSES:
        raise ValueError(f"{where}: {len(names)} class(es) {reprlib.repr(list(names))}; expected 2 to {MAX_CLASSES}")
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: class names {list(names)} repeat a name; expected distinct names")
    return names


def class_names(data_config) -> tuple[str, ...]:
    """The run's classes in label order: ``data.class_names`` when a task sets them, else NORMAL, PNEUMONIA."""
    names = data_config.get("class_names") if data_config is not None else None
    return tuple(names) if names else CLASS_NAMES


def class_probabilities(logits: jax.Array) -> jax.Array:
    """P(positive) ``(B,)`` for a binary head (``positive_probability``), else softmax ``(B, C)``, float32 (traceable)."""
    if logits.ndim == 2 and logits.shape[-1] > 2:
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return positive_probability(logits)


def class_record(probs: Sequence[float], names: Sequence[str]) -> dict:
    """A prediction record's fields past two classes: ``{'probs': {class: p}, 'label': the most probable}``."""
    values = [float(p) for p in probs]
    return {"probs": dict(zip(names, values)), "label": names[int(np.argmax(values))]}


def probabilities_from_logits(logits) -> np.ndarray:
    """Softmax ``(B, C)`` of a head with more than two classes, on the host in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] < 3:
        raise ValueError(f"probabilities_from_logits: expected logits of shape (B, C>2), got {logits.shape}")
    return softmax(logits, axis=1)


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
    """Per-class loss weights for ``config.class_weights``: 'none', 'balanced' or 'W0,W1[,W2...]' (one per class).

    'balanced' is scikit-learn's n_samples / (n_classes * count_c), so the weighted
    classes contribute equally to the loss.
    """
    if spec in (None, "", "none"):
        return None
    if spec == "balanced":
        if not class_counts or min(class_counts) <= 0:
            raise ValueError(f"config.class_weights='balanced' needs every class present, got counts {class_counts}")
        counts = np.asarray(class_counts, np.float64)
        return (counts.sum() / (len(counts) * counts)).astype(np.float32)
    try:
        weights = np.asarray([float(v) for v in str(spec).split(",")], np.float32)
    except ValueError:
        weights = np.zeros(0)
    n = len(class_counts) if class_counts else 2
    if weights.shape != (n,):
        expected = "W_NORMAL,W_PNEUMONIA" if n == 2 else f"{n} comma-separated weights, one per class"
        raise ValueError(f"config.class_weights={spec!r}: expected 'none', 'balanced' or '{expected}'")
    if not (np.isfinite(weights).all() and (weights >= 0).all() and weights.sum() > 0):
        # A NaN, infinite or negative weight trains to a NaN loss or away from the labels, after the compile.
        raise ValueError(f"config.class_weights={spec!r}: expected finite weights >= 0, not all 0")
    return weights
