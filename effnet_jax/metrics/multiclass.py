"""Metrics of a task with more than two classes: per class one-vs-rest, macro and weighted averages.

Labels are class indices, probabilities one row per image (softmax, rows sum to 1);
a prediction is the most probable class (no threshold: there is no positive class).
Each class is scored one-vs-rest: its AUC ranks P(class) of its images against the
others', its sensitivity is its recall, its specificity the others' share not called it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from sklearn import metrics as skm

from effnet_jax.metrics.calibration import top_label_ece

# Per-class metrics, in the order tables show them; each also comes as a macro and a weighted average.
PER_CLASS = ("auc", "sensitivity", "specificity", "precision", "f1")
# Pairs of classes scored against each other (``pair_metrics``) up to this many classes.
MAX_PAIRED_CLASSES = 10


def check_inputs(labels, probs, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(labels int64 (N,), probs float64 (N, C))``; a ValueError for other shapes, labels out of range, NaNs."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (labels.size, num_classes):
        raise ValueError(f"probs of shape {probs.shape}: expected ({labels.size}, {num_classes}), one row per label")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be class indices 0..{num_classes - 1}, got {sorted(set(labels.tolist()))[:5]}")
    if np.isnan(probs).any():
        raise ValueError(f"probs contain {int(np.isnan(probs).sum())} NaN values (did the model diverge?).")
    return labels, probs


def compute_metrics(labels, probs, class_names) -> dict[str, Any]:
    """Accuracy, per-class one-vs-rest metrics with their macro and weighted averages, and the confusion matrix.

    ``auc`` (and ``f1``, ``sensitivity``, ...) at the top level are the macro averages, so a
    run picks its best checkpoint by macro AUC; ``per_class[name]`` holds each class's
    values and its ``support``. A class with no images has NaN AUC and sensitivity (a
    warning says so) and is left out of the averages. ``confusion_matrix[i][j]``: images of
    class i predicted j.
    """
    names = list(class_names)
    labels, probs = check_inputs(labels, probs, len(names))
    preds = np.argmax(probs, axis=1) if labels.size else np.zeros(0, np.int64)
    cm = skm.confusion_matrix(labels, preds, labels=list(range(len(names)))) if labels.size else None
    cm = np.zeros((len(names), len(names)), np.int64) if cm is None else cm
    support = cm.sum(axis=1)
    per_class = {}
    for k, name in enumerate(names):
        tp = cm[k, k]
        fn, fp = support[k] - tp, cm[:, k].sum() - tp
        tn = cm.sum() - tp - fn - fp
        if 0 < support[k] < labels.size:
            auc = float(skm.roc_auc_score(labels == k, probs[:, k]))
        else:
            warnings.warn(f"compute_metrics: {name} one-vs-rest AUC is undefined (one side empty); NaN.", stacklevel=2)
            auc = math.nan
        precision = tp / (tp + fp) if tp + fp else math.nan
        sensitivity = tp / support[k] if support[k] else math.nan
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
        per_class[name] = {
            "auc": auc,
            "sensitivity": float(sensitivity),
            "specificity": float(tn / (tn + fp)) if tn + fp else math.nan,
            "precision": float(precision),
            "f1": float(f1),
            "support": int(support[k]),
        }
    out: dict[str, Any] = {
        "n": int(labels.size),
        "accuracy": float(np.mean(preds == labels)) if labels.size else math.nan,
        "balanced_accuracy": _average(per_class, "sensitivity", weighted=False),
    }
    for metric in PER_CLASS:
        out[metric] = _average(per_class, metric, weighted=False)
    out["macro"] = {m: out[m] for m in PER_CLASS}
    out["weighted"] = {m: _average(per_class, m, weighted=True) for m in PER_CLASS}
    out["ece"] = top_label_ece(labels, probs) if labels.size else math.nan
    out["log_loss"] = (
        float(skm.log_loss(labels, probs / probs.sum(axis=1, keepdims=True), labels=list(range(len(names)))))
        if labels.size
        else math.nan
    )
    out["per_class"] = per_class
    if len(names) <= MAX_PAIRED_CLASSES:
        out["pairs"] = {
            f"{names[a]}_vs_{names[b]}": pair_metrics(labels, probs, a, b)
            for a in range(len(names))
            for b in range(a + 1, len(names))
        }
    out["class_names"] = names
    out["confusion_matrix"] = cm.astype(int).tolist()
    return out


def pair_metrics(labels, probs, first: int, second: int) -> dict[str, Any]:
    """Class ``second`` against class ``first`` on their images alone (bacterial vs viral pneumonia, say).

    The score is P(second) / (P(first) + P(second)); the label the more probable of the two.
    ``sensitivity`` is the recall of ``second``, ``specificity`` the recall of ``first``.
    """
    keep = (labels == first) | (labels == second)
    y = (labels[keep] == second).astype(np.int64)
    p = probs[keep][:, [first, second]]
    score = p[:, 1] / np.maximum(p.sum(axis=1), np.finfo(np.float64).tiny)
    called = p[:, 1] > p[:, 0]
    both = 0 < y.sum() < y.size
    return {
        "n": int(y.size),
        "auc": float(skm.roc_auc_score(y, score)) if both else math.nan,
        "accuracy": float(np.mean(called == y)) if y.size else math.nan,
        "sensitivity": float(np.mean(called[y == 1])) if y.sum() else math.nan,
        "specificity": float(np.mean(~called[y == 0])) if y.size - y.sum() else math.nan,
    }


def _average(per_class: dict, metric: str, weighted: bool) -> float:
    values = [(v[metric], v["support"]) for v in per_class.values() if not math.isnan(v[metric])]
    if not values:
        return math.nan
    x, w = np.array(values, np.float64).T
    return float(np.average(x, weights=w) if weighted and w.sum() else x.mean())


def scalars(metrics: dict) -> dict[str, float]:
    """The numbers a metrics log line holds: the top-level ones and ``<metric>_<CLASS>`` per class."""
    out = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    for name, values in metrics.get("per_class", {}).items():
        for metric in ("auc", "sensitivity", "specificity", "f1"):
            out[f"{metric}_{name}"] = values[metric]
    return out


def format_table(metrics: dict) -> str:
    """A plain-text table: one row per class, one column per metric, then the macro and weighted rows."""
    names = metrics["class_names"]
    rows = [(n, metrics["per_class"][n]) for n in names]
    rows += [("macro", metrics["macro"]), ("weighted", metrics["weighted"])]
    width = max(len(r[0]) for r in rows)
    header = "  ".join([" " * width] + [m.rjust(11) for m in (*PER_CLASS, "support")])
    lines = [header]
    for name, values in rows:
        cells = ["n/a" if _nan(values.get(m)) else f"{values[m]:.4f}" for m in PER_CLASS]
        cells.append(str(values.get("support", "")))
        lines.append("  ".join([name.ljust(width)] + [c.rjust(11) for c in cells]))
    lines.append(f"accuracy {metrics['accuracy']:.4f}, n {metrics['n']}")
    return "\n".join(lines)


def _nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
