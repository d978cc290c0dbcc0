"""Binary classification metrics for pneumonia diagnosis (class 1 = PNEUMONIA).

Everything here works on plain numpy arrays of labels (0/1) and probabilities of
the positive class, so the trainer's periodic evaluation, ``effnet-eval`` and the
tests share one definition of every number.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from sklearn import metrics as skm

from effnet_jax.labels import METRIC_NAMES


def check_inputs(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    """``(labels int64, probs float64)`` as flat arrays; a ValueError for unequal lengths, labels not 0/1, NaNs."""
    labels = np.asarray(labels).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if labels.shape != probs.shape:
        raise ValueError(f"labels ({labels.shape[0]}) and probs ({probs.shape[0]}) must have the same length.")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got values {sorted(set(labels.tolist()) - {0, 1})[:5]}.")
    if np.isnan(probs).any():
        raise ValueError(f"probs contain {int(np.isnan(probs).sum())} NaN values (did the model diverge?).")
    return labels.astype(np.int64), probs


def _has_both_classes(labels: np.ndarray) -> bool:
    return labels.size > 0 and 0 < labels.sum() < labels.size


def compute_metrics(labels, probs, threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, AUC, precision, recall (sensitivity), specificity, F1 and the confusion matrix.

    A prediction is positive when ``prob >= threshold`` (the convention of
    ``sklearn.metrics.roc_curve``, so a threshold read off the ROC reproduces its
    point). Ratios whose denominator is zero (recall with no positive labels, say)
    are NaN rather than a silent 0; AUC with a single class present is NaN with a
    warning. ``confusion_matrix`` is ``[[TN, FP], [FN, TP]]`` (rows: true label).
    """
    labels, probs = check_inputs(labels, probs)
    preds = (probs >= threshold).astype(np.int64)
    cm = skm.confusion_matrix(labels, preds, labels=[0, 1])
    (tn, fp), (fn, tp) = cm.tolist()
    n = int(labels.size)
    if _has_both_classes(labels):
        auc = float(skm.roc_auc_score(labels, probs))
    else:
        present = "no examples" if n == 0 else f"only class {int(labels[0])}"
        warnings.warn(f"compute_metrics: AUC is undefined with {present} in the labels; reporting NaN.", stacklevel=2)
        auc = math.nan
    nan = np.nan
    return {
        "n": n,
        "threshold": float(threshold),
        "accuracy": float(skm.accuracy_score(labels, preds)) if n else math.nan,
        "auc": auc,
        "precision": float(skm.precision_score(labels, preds, labels=[0, 1], zero_division=nan)),
        "recall": float(skm.recall_score(labels, preds, labels=[0, 1], zero_division=nan)),
        "specificity": float(skm.recall_score(labels, preds, labels=[0, 1], pos_label=0, zero_division=nan)),
        "f1": float(skm.f1_score(labels, preds, labels=[0, 1], zero_division=nan)),
        # Calibration: a threshold moved for a new population only means something if the
        # probabilities do; over-confident fine-tunes show here before they show in accuracy.
        "brier": float(skm.brier_score_loss(labels, probs, pos_label=1)) if n else math.nan,
        "ece": expected_calibration_error(labels, probs) if n else math.nan,
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }


def expected_calibration_error(labels, probs, num_bins: int = 15) -> float:
    """Mean |observed positive rate - mean predicted probability| over equal-width bins,
    weighted by the fraction of examples in each bin (Guo et al. 2017, on P(positive))."""
    labels, probs = check_inputs(labels, probs)
    if labels.size == 0:
        return math.nan
    bins = np.minimum((probs * num_bins).astype(np.int64), num_bins - 1)
    gap = np.abs(np.bincount(bins, labels, num_bins) - np.bincount(bins, probs, num_bins))
    return float(gap.sum() / labels.size)


def youden_threshold(labels, probs) -> float:
    """The threshold that maximises Youden's J (sensitivity + specificity - 1) on the ROC.

    Ties go to the highest threshold (the first maximum along sklearn's ROC),
    which flags the fewest healthy cases. With a single class in ``labels`` the
    ROC does not exist: 0.5 is returned with a warning.
    """
    labels, probs = check_inputs(labels, probs)
    if not _has_both_classes(labels):
        warnings.warn("youden_threshold: labels hold a single class, so there is no ROC; using 0.5.", stacklevel=2)
        return 0.5
    fpr, tpr, thresholds = skm.roc_curve(labels, probs, drop_intermediate=False)
    # The first ROC point is "predict nothing positive" at threshold +inf; never pick it.
    j = (tpr - fpr)[1:]
    return float(thresholds[1:][int(np.argmax(j))])


def sensitivity_threshold(labels, probs, min_sensitivity: float = 0.95) -> float:
    """The highest threshold whose sensitivity is still >= ``min_sensitivity``.

    The most specific operating point that misses at most ``1 - min_sensitivity`` of the
    PNEUMONIA cases: the screening rule (docs/thresholds.md). With no positive labels
    there is nothing to keep sensitive: 0.5 is returned with a warning.
    """
    labels, probs = check_inputs(labels, probs)
    if not 0.0 < min_sensitivity <= 1.0:
        raise ValueError(f"min_sensitivity={min_sensitivity}: expected a fraction in (0, 1]")
    positives = np.sort(probs[labels == 1])
    if positives.size == 0:
        warnings.warn("sensitivity_threshold: no positive labels; using 0.5.", stacklevel=2)
        return 0.5
    # Keeping the k lowest-scored positives below the threshold misses k of them.
    missed = int(math.floor((1.0 - min_sensitivity) * positives.size + 1e-9))
    return float(positives[missed])


def roc_points(labels, probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` of the ROC curve, or empty arrays when it is undefined."""
    labels, probs = check_inputs(labels, probs)
    if not _has_both_classes(labels):
        return np.zeros(0), np.zeros(0), np.zeros(0)
    return skm.roc_curve(labels, probs)


def json_safe(value: Any) -> Any:
    """Replaces NaN/inf floats (not valid JSON) with None, recursively, and numpy scalars with Python ones."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_table(columns: dict[str, dict[str, Any]], names=METRIC_NAMES) -> str:
    """A plain-text table: one row per metric, one column per named result (e.g. per threshold).

    A result holding bootstrap intervals (``ci95``, from ``metrics.intervals``) shows
    them beside its values: ``0.9680 [0.951, 0.980]``.
    """
    headers = list(columns)
    rows = [("threshold", [f"{columns[h]['threshold']:.4f}" for h in headers])]
    for name in names:
        rows.append((name, [_fmt(columns[h].get(name)) + _fmt_ci(columns[h], name) for h in headers]))
    rows.append(("TN FP / FN TP", [_fmt_cm(columns[h]["confusion_matrix"]) for h in headers]))
    rows.append(("n", [str(columns[h]["n"]) for h in headers]))
    width0 = max(len(r[0]) for r in rows)
    widths = [max(len(h), *(len(r[1][i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join([" " * width0] + [h.rjust(w) for h, w in zip(headers, widths)])]
    for name, cells in rows:
        lines.append("  ".join([name.ljust(width0)] + [c.rjust(w) for c, w in zip(cells, widths)]))
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}"


def _fmt_ci(column: dict, name: str) -> str:
    interval = (column.get("ci95") or {}).get(name)
    return "" if interval is None else f" [{interval[0]:.3f}, {interval[1]:.3f}]"


def _fmt_cm(cm) -> str:
    (tn, fp), (fn, tp) = cm
    return f"{tn} {fp} / {fn} {tp}"
