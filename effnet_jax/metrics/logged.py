"""The metrics one evaluation during training logs for a split, and their names, from one function.

``train.evaluate`` computes them on each evaluated split. ``metric_names`` computes them on a
tiny synthetic set of labels and scores, so a config key naming a metric (``best_metric``,
``early_stopping.metric``) is checked at startup against what evaluation will really log,
not against a list that could drift from it.
"""

from __future__ import annotations

import numpy as np

from effnet_jax.metrics import multiclass
from effnet_jax.metrics.classification import compute_metrics, sensitivity_threshold


def split_metrics(labels, probs, loss: float, class_names, operating_sensitivity: float = 0.95) -> dict:
    """Loss and classification metrics of one split: ``probs`` (N,) of the positive class, or (N, C) past two."""
    metrics = {"loss": float(loss)}
    if np.ndim(probs) == 2:
        # More than two classes: one-vs-rest per class and their macro averages (no threshold).
        found = multiclass.compute_metrics(labels, probs, class_names)
        metrics.update(multiclass.scalars(found))
        metrics["confusion_matrix"] = found["confusion_matrix"]
        return metrics
    metrics.update(compute_metrics(labels, probs))
    if 0 < np.sum(labels):
        # The screening operating point on this split (config.operating_threshold).
        metrics["sensitivity_threshold"] = sensitivity_threshold(labels, probs, operating_sensitivity)
    return metrics


def metric_names(class_names) -> list[str]:
    """The numeric metrics ``split_metrics`` logs for a task of ``class_names``, sorted.

    Computed on two examples of every class, each scored right, so every metric is defined.
    """
    count = len(class_names)
    labels = np.arange(2 * count) % count
    if count > 2:
        probs = np.full((labels.size, count), 0.5 / count) + 0.5 * np.eye(count)[labels]
    else:
        probs = np.where(labels == 1, 0.8, 0.2)
    found = split_metrics(labels, probs, 0.0, class_names)
    return sorted(k for k, v in found.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
