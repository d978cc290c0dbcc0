"""The operating rule judged on images it was not fitted on: fit on a random half, score the other half.

effnet-eval's operating threshold is the highest one keeping sensitivity >= 0.95 on the
external set, so its accuracy and specificity on that same set are optimistic. The project is
judged on images it never sees, with the threshold fitted beforehand, so the results records
report the honest version too: each split draws half of every class to fit the threshold on
and scores the rule on the rest; the mean over many splits is the column "rule fitted on the
other half" of the results tables (docs/experiments).
"""

from __future__ import annotations

import numpy as np

from effnet_jax.metrics.classification import check_inputs, sensitivity_threshold

DEFAULT_SPLITS = 200


def rates(labels, probs, threshold: float) -> tuple[float, float, float]:
    """``(accuracy, sensitivity, specificity)`` of calling PNEUMONIA (label 1) at ``probs >= threshold``."""
    labels, probs = check_inputs(labels, probs)
    called = probs >= threshold
    return (
        float(np.mean(called == labels)),
        float(np.mean(called[labels == 1])),
        float(np.mean(~called[labels == 0])),
    )


def held_out_rule(
    labels, probs, rng: np.random.Generator, splits: int = DEFAULT_SPLITS, min_sensitivity: float = 0.95
) -> tuple[float, float, float]:
    """Mean ``(accuracy, sensitivity, specificity)`` over ``splits`` random halves, fitted on one and scored on the other.

    Each split draws ``n_c // 2`` examples of each class ``c`` (without replacement) to fit
    ``sensitivity_threshold(min_sensitivity)`` on; the rule is scored on the remaining
    examples. Both classes need at least two examples so that each half holds one.
    """
    labels, probs = check_inputs(labels, probs)
    members = [np.flatnonzero(labels == c) for c in (0, 1)]
    if min(len(m) for m in members) < 2:
        raise ValueError(
            f"held_out_rule: each class needs at least 2 examples to split in halves, got "
            f"{len(members[0])} negatives and {len(members[1])} positives"
        )
    if splits < 1:
        raise ValueError(f"held_out_rule: splits={splits}: expected at least 1")
    out = []
    for _ in range(splits):
        fit = np.zeros(len(labels), bool)
        for m in members:
            fit[rng.choice(m, len(m) // 2, replace=False)] = True
        threshold = sensitivity_threshold(labels[fit], probs[fit], min_sensitivity)
        out.append(rates(labels[~fit], probs[~fit], threshold))
    return tuple(float(v) for v in np.mean(out, axis=0))
