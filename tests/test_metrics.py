"""Specification of effnet_jax.metrics.classification against hand-computed confusion matrices."""

import json
import math

import numpy as np
import pytest

from effnet_jax.labels import probs_from_logits
from effnet_jax.metrics.classification import (
    compute_metrics,
    expected_calibration_error,
    format_table,
    json_safe,
    youden_threshold,
)

# Negatives score 0.1, 0.2, 0.52, 0.58; positives 0.3, 0.6, 0.8, 0.9.
LABELS = [0, 0, 0, 0, 1, 1, 1, 1]
PROBS = [0.1, 0.2, 0.52, 0.58, 0.3, 0.6, 0.8, 0.9]


def test_metrics_at_half_match_hand_counts():
    m = compute_metrics(LABELS, PROBS, threshold=0.5)
    # At 0.5: TN = {0.1, 0.2}, FP = {0.52, 0.58}, FN = {0.3}, TP = {0.6, 0.8, 0.9}.
    assert m["confusion_matrix"] == [[2, 2], [1, 3]]
    assert m["n"] == 8
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    # 14 of the 16 (positive, negative) pairs are ranked correctly.
    assert m["auc"] == pytest.approx(14 / 16)


def test_calibration_metrics_by_hand():
    m = compute_metrics(LABELS, PROBS)
    squared = [0.01, 0.04, 0.52**2, 0.58**2, 0.7**2, 0.4**2, 0.2**2, 0.1**2]
    assert m["brier"] == pytest.approx(sum(squared) / 8)
    # Five bins of width 0.2: [0.1]->|0-0.1|, [0.2,0.3]->|1-0.5|, [0.52,0.58]->|0-1.1|,
    # [0.6]->|1-0.6|, [0.8,0.9]->|2-1.7|; summed over the 8 examples.
    assert expected_calibration_error(LABELS, PROBS, num_bins=5) == pytest.approx((0.1 + 0.5 + 1.1 + 0.4 + 0.3) / 8)
    # Outcomes drawn with the stated probabilities: ECE shrinks toward 0 with n.
    rng = np.random.default_rng(0)
    p = rng.uniform(size=200_000)
    assert expected_calibration_error(rng.uniform(size=p.size) < p, p) < 0.01
    assert expected_calibration_error(rng.uniform(size=p.size) < p, np.sqrt(p)) > 0.1


def test_prediction_is_positive_at_exactly_the_threshold():
    m = compute_metrics([0, 1], [0.6, 0.6], threshold=0.6)
    assert m["confusion_matrix"] == [[0, 1], [0, 1]]


def test_youden_threshold_picks_the_best_operating_point():
    # J at 0.6 is 3/4 - 0 = 0.75; every other threshold gives at most 0.5.
    assert youden_threshold(LABELS, PROBS) == pytest.approx(0.6)
    m = compute_metrics(LABELS, PROBS, threshold=youden_threshold(LABELS, PROBS))
    assert m["confusion_matrix"] == [[4, 0], [1, 3]]


def test_youden_threshold_breaks_ties_towards_the_higher_threshold():
    # Both 0.7 (TPR 1/2, FPR 0) and 0.4 (TPR 1, FPR 1/2) give J = 0.5.
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.5, 0.4, 0.7]) == pytest.approx(0.7)


def test_single_class_gives_nan_auc_with_a_warning_not_a_crash():
    with pytest.warns(UserWarning, match="AUC is undefined"):
        m = compute_metrics([1, 1, 1], [0.2, 0.7, 0.9])
    assert math.isnan(m["auc"])
    assert math.isnan(m["specificity"])  # no negatives: 0/0
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["confusion_matrix"] == [[0, 0], [1, 2]]
    with pytest.warns(UserWarning, match="single class"):
        assert youden_threshold([0, 0], [0.3, 0.4]) == 0.5


def test_probs_from_logits_sigmoid_and_softmax_heads_agree():
    z = np.array([-800.0, -2.0, 0.0, 3.0, 800.0])
    sigmoid = probs_from_logits(z[:, None])
    np.testing.assert_allclose(sigmoid[1:4], 1 / (1 + np.exp(-z[1:4])), rtol=1e-12)
    assert sigmoid[0] == 0.0 and sigmoid[4] == 1.0  # no overflow, no NaN
    two = np.stack([np.zeros_like(z), z], axis=1) + 5.0  # softmax is shift-invariant
    np.testing.assert_allclose(probs_from_logits(two), sigmoid, rtol=1e-12)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        probs_from_logits(np.zeros((4, 3)))


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="same length"):
        compute_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="must be 0 or 1"):
        compute_metrics([0, 2], [0.5, 0.5])
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics([0, 1], [0.5, float("nan")])


def test_json_safe_and_table_handle_nan():
    with pytest.warns(UserWarning):
        m = compute_metrics([1, 1], [0.2, 0.9])
    text = json.dumps(json_safe(m), allow_nan=False)
    assert json.loads(text)["auc"] is None
    table = format_table({"t=0.5": m})
    assert "auc" in table and "n/a" in table and "0 0 / 1 1" in table
