"""Bootstrap 95% confidence intervals for accuracy, AUC, sensitivity, specificity and F1.

On a test set of a few hundred X-rays one number hides several points of sampling noise.
Resampling is by patient when patient ids are known: a patient's films are correlated,
so drawing films one by one would pretend to more independent evidence than there is.

Every resample is a vector of weights (how often each image was drawn), so all of them
are scored at once with array operations instead of a loop over scikit-learn calls;
``tests/test_intervals.py`` checks the weighted formulas against scikit-learn's
``sample_weight`` on the same resamples. Percentile intervals (2.5th and 97.5th
percentiles of the resampled values). A resample holding a single class has no AUC (and no
sensitivity or specificity for the missing class): those values are left out of that
metric's percentiles, and ``valid`` counts the resamples that remained.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from effnet_jax.metrics.classification import check_inputs

# The metrics that get an interval, named as in labels.METRIC_NAMES (recall = sensitivity).
INTERVAL_METRICS = ("accuracy", "auc", "recall", "specificity", "f1")
DEFAULT_RESAMPLES = 2000


def resample_weights(groups, num_resamples: int, seed: int) -> np.ndarray:
    """``(num_resamples, N)`` counts of how often each example is drawn, drawing whole groups.

    ``groups`` holds one id per example (patient ids; any hashable labels): each resample
    draws as many groups as there are, with replacement, and an example's weight is the
    number of times its group was drawn, so a patient's images always move together.
    """
    _, group_of = np.unique(np.asarray(groups), return_inverse=True)
    group_of = group_of.reshape(-1)
    num_groups = int(group_of.max()) + 1 if group_of.size else 0
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, num_groups, size=(num_resamples, num_groups))
    # One bincount over all resamples: resample r's draws are offset by r * num_groups.
    offsets = (np.arange(num_resamples) * num_groups)[:, None]
    counts = np.bincount((drawn + offsets).reshape(-1), minlength=num_resamples * num_groups)
    return counts.reshape(num_resamples, num_groups)[:, group_of].astype(np.float64)


def weighted_auc(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC per row of ``weights`` ``(R, N)``: the weighted Mann-Whitney statistic, ties counting 1/2.

    Equals ``sklearn.metrics.roc_auc_score(labels, probs, sample_weight=row)``; NaN for a
    row whose weights leave only one class.
    """
    _, level = np.unique(probs, return_inverse=True)  # score levels in increasing order
    level = level.reshape(-1)
    num_levels = int(level.max()) + 1
    rows = weights.shape[0]
    offsets = (np.arange(rows) * num_levels)[:, None]

    def per_level(mask):
        # (R, num_levels): weight of the masked examples at each score level.
        idx = (level[mask][None, :] + offsets).reshape(-1)
        return np.bincount(idx, weights[:, mask].reshape(-1), minlength=rows * num_levels).reshape(rows, num_levels)

    pos, neg = per_level(labels == 1), per_level(labels == 0)
    neg_below = np.cumsum(neg, axis=1) - neg
    wins = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / np.where(pairs > 0, pairs, 1.0), np.nan)


def weighted_threshold_metrics(labels: np.ndarray, preds: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, sensitivity (recall), specificity and F1 per row of ``weights``; NaN where undefined."""
    y, p = labels.astype(bool), preds.astype(bool)
    tp, fn = weights @ (y & p), weights @ (y & ~p)
    tn, fp = weights @ (~y & ~p), weights @ (~y & p)

    def ratio(num, den):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

    return {
        "accuracy": ratio(tp + tn, tp + tn + fp + fn),
        "recall": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
    }


def bootstrap_intervals(
    labels,
    probs,
    thresholds: Sequence[float],
    groups=None,
    num_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> list[dict]:
    """Bootstrap intervals of ``INTERVAL_METRICS`` at each threshold, from the same resamples.

    Returns one dict per threshold: ``{metric: [low, high] or None, 'resamples': R,
    'valid': {metric: count}, 'resampled_by': 'patient' | 'image', 'groups': G}``. A
    prediction is positive when ``prob >= threshold``, as in ``compute_metrics``.
    ``groups``: a patient id per example (None: every image its own group).
    """
    labels, probs = check_inputs(labels, probs)
    if num_resamples < 1:
        raise ValueError(f"num_resamples={num_resamples}: expected at least 1")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level}: expected a fraction in (0, 1)")
    by_patient = groups is not None
    if groups is None:
        groups = np.arange(labels.size)
    groups = np.asarray(groups)
    if groups.shape != labels.shape:
        raise ValueError(f"groups ({groups.shape[0]}) and labels ({labels.shape[0]}) must have the same length")
    if labels.size == 0:
        return [_summary({}, num_resamples, by_patient, 0, level) for _ in thresholds]
    weights = resample_weights(groups, num_resamples, seed)
    auc = weighted_auc(labels, probs, weights)
    num_groups = len(np.unique(groups))
    out = []
    for t in thresholds:
        values = weighted_threshold_metrics(labels, probs >= t, weights)
        values["auc"] = auc
        out.append(_summary(values, num_resamples, by_patient, num_groups, level))
    return out


def _summary(values: dict, num_resamples: int, by_patient: bool, num_groups: int, level: float) -> dict:
    tail = 100.0 * (1.0 - level) / 2.0
    result: dict = {}
    valid = {}
    for name in INTERVAL_METRICS:
        finite = values.get(name, np.zeros(0))
        finite = finite[np.isfinite(finite)]
        valid[name] = int(finite.size)
        result[name] = [float(v) for v in np.percentile(finite, [tail, 100.0 - tail])] if finite.size else None
    result.update(
        level=level,
        resamples=num_resamples,
        valid=valid,
        resampled_by="patient" if by_patient else "image",
        groups=num_groups,
    )
    return result
