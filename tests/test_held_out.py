"""The operating rule fitted on one half and scored on the other (metrics.held_out): the results tables' honest column."""

import itertools

import numpy as np
import pytest

from effnet_jax.metrics import held_out
from effnet_jax.metrics.classification import sensitivity_threshold

# 4 normals and 6 pneumonias, two of each class scored against their label.
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
PROBS = np.array([0.1, 0.2, 0.7, 0.9, 0.15, 0.6, 0.8, 0.85, 0.95, 0.3])


def test_rates_count_calls_at_the_threshold():
    # At 0.7: normals 0.7 and 0.9 called (2 of 4 wrong); pneumonias 0.8, 0.85, 0.95 called (3 of 6).
    assert held_out.rates(LABELS, PROBS, 0.7) == pytest.approx((5 / 10, 3 / 6, 2 / 4))


def expected_over_every_split(labels, probs):
    """The exact mean over every way to draw half of each class: what the random splits estimate."""
    negatives, positives = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    out = []
    for fit_neg in itertools.combinations(negatives, len(negatives) // 2):
        for fit_pos in itertools.combinations(positives, len(positives) // 2):
            fit = np.zeros(len(labels), bool)
            fit[list(fit_neg) + list(fit_pos)] = True
            t = sensitivity_threshold(labels[fit], probs[fit], 0.95)
            called = probs[~fit] >= t
            rest = labels[~fit]
            out.append((np.mean(called == rest), np.mean(called[rest == 1]), np.mean(~called[rest == 0])))
    return np.mean(out, axis=0)


def test_random_halves_estimate_the_mean_over_every_split():
    exact = expected_over_every_split(LABELS, PROBS)
    estimate = held_out.held_out_rule(LABELS, PROBS, np.random.default_rng(0), splits=4000)
    # 120 equally likely splits; 4000 draws put the mean within about 0.01 of the exact one.
    assert estimate == pytest.approx(exact, abs=0.015)
    # The same generator state gives the same numbers (the records are reproducible).
    assert held_out.held_out_rule(LABELS, PROBS, np.random.default_rng(3)) == held_out.held_out_rule(
        LABELS, PROBS, np.random.default_rng(3)
    )


def test_a_class_too_small_to_halve_is_refused():
    with pytest.raises(ValueError, match="each class needs at least 2 examples.*got 1 negatives and 3 positives"):
        held_out.held_out_rule([0, 1, 1, 1], [0.1, 0.2, 0.3, 0.4], np.random.default_rng(0))
