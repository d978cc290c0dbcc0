"""Bootstrap intervals: parity with scikit-learn per resample, patients kept whole, seeds, degenerate resamples."""

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from effnet_jax.metrics import intervals
from effnet_jax.metrics.classification import compute_metrics


def scores(n, seed=0, separation=1.5):
    """Labels and probabilities of a decent classifier: positives score higher on average."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.6).astype(np.int64)
    logits = rng.normal(size=n) + separation * (2 * labels - 1)
    # Rounded so that ties occur, as they do in float32 model outputs.
    return labels, np.round(1 / (1 + np.exp(-logits)), 2)


def test_weighted_formulas_equal_sklearn_with_sample_weight_on_each_resample():
    labels, probs = scores(60)
    groups = np.repeat(np.arange(20), 3)
    weights = intervals.resample_weights(groups, 25, seed=3)
    auc = intervals.weighted_auc(labels, probs, weights)
    rest = intervals.weighted_threshold_metrics(labels, probs >= 0.55, weights)
    for r, w in enumerate(weights):
        keep = w > 0
        y, p, sw = labels[keep], probs[keep], w[keep]
        if 0 < y.sum() < y.size:
            assert auc[r] == pytest.approx(skm.roc_auc_score(y, p, sample_weight=sw), abs=1e-12)
        pred = (p >= 0.55).astype(int)
        assert rest["accuracy"][r] == pytest.approx(skm.accuracy_score(y, pred, sample_weight=sw), abs=1e-12)
        assert rest["f1"][r] == pytest.approx(skm.f1_score(y, pred, sample_weight=sw), abs=1e-12)
        assert rest["recall"][r] == pytest.approx(skm.recall_score(y, pred, sample_weight=sw), abs=1e-12)
        assert rest["specificity"][r] == pytest.approx(
            skm.recall_score(y, pred, pos_label=0, sample_weight=sw), abs=1e-12
        )


def test_patient_resampling_keeps_every_image_of_a_patient_together():
    groups = np.array(["p1", "p1", "p1", "p2", "p3", "p3", "p4", "p5", "p5", "p5", "p5"])
    weights = intervals.resample_weights(groups, 500, seed=0)
    assert weights.shape == (500, groups.size)
    for patient in np.unique(groups):
        columns = weights[:, groups == patient]
        assert (columns == columns[:, :1]).all()  # a patient's images are drawn the same number of times
    # Each resample draws as many patients as there are (5), whole.
    per_patient = np.stack([weights[:, groups == p][:, 0] for p in np.unique(groups)], axis=1)
    assert (per_patient.sum(axis=1) == 5).all()
    assert len(np.unique(per_patient, axis=0)) > 100  # and the draws vary


def test_interval_contains_the_point_value_and_shrinks_with_more_data():
    widths = {}
    for n in (150, 1200):
        labels, probs = scores(n, seed=n)
        point = compute_metrics(labels, probs, 0.5)
        (ci,) = intervals.bootstrap_intervals(labels, probs, [0.5], num_resamples=1000, seed=0)
        for name in intervals.INTERVAL_METRICS:
            low, high = ci[name]
            assert low <= point[name] <= high, (n, name, low, point[name], high)
        widths[n] = {name: ci[name][1] - ci[name][0] for name in intervals.INTERVAL_METRICS}
        assert ci["resamples"] == 1000 and ci["resampled_by"] == "image" and ci["groups"] == n
    for name in intervals.INTERVAL_METRICS:
        # 8x the data: intervals about sqrt(8) = 2.8x narrower; at least 2x is asked.
        assert widths[1200][name] < widths[150][name] / 2, name


def test_reproducible_for_a_seed_and_different_for_another():
    labels, probs = scores(200)
    a = intervals.bootstrap_intervals(labels, probs, [0.3, 0.7], num_resamples=300, seed=7)
    b = intervals.bootstrap_intervals(labels, probs, [0.3, 0.7], num_resamples=300, seed=7)
    c = intervals.bootstrap_intervals(labels, probs, [0.3, 0.7], num_resamples=300, seed=8)
    assert a == b
    assert a[0]["auc"] != c[0]["auc"]
    assert a[0]["auc"] == a[1]["auc"]  # AUC does not depend on the threshold; the same resamples
    assert a[0]["recall"][0] > a[1]["recall"][0]  # a lower threshold is more sensitive


def test_resamples_with_one_class_are_left_out_not_fatal():
    # Two patients, one per class: a quarter of resamples draw only PNEUMONIA, a quarter only NORMAL.
    labels = np.array([0, 0, 1, 1])
    probs = np.array([0.2, 0.3, 0.8, 0.9])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from 0/0 either
        (ci,) = intervals.bootstrap_intervals(
            labels, probs, [0.5], groups=["a", "a", "b", "b"], num_resamples=400, seed=0
        )
    assert ci["resampled_by"] == "patient" and ci["groups"] == 2
    valid = ci["valid"]
    assert valid["accuracy"] == 400  # defined whatever was drawn
    # Sensitivity and F1 need a PNEUMONIA image, specificity a NORMAL one, AUC both.
    assert valid["f1"] == valid["recall"] and 250 < valid["recall"] < 350 and 250 < valid["specificity"] < 350
    assert valid["auc"] == valid["recall"] + valid["specificity"] - 400
    assert ci["auc"] == [1.0, 1.0] and ci["accuracy"] == [1.0, 1.0]
    # A split with a single class: no AUC interval at all, and no error.
    (only,) = intervals.bootstrap_intervals([1, 1, 1], [0.2, 0.6, 0.9], [0.5], num_resamples=50)
    assert only["auc"] is None and only["specificity"] is None and only["valid"]["auc"] == 0
    assert only["recall"][0] <= 2 / 3 <= only["recall"][1]


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="groups \\(2\\) and labels \\(3\\)"):
        intervals.bootstrap_intervals([0, 1, 1], [0.1, 0.2, 0.3], [0.5], groups=["a", "b"])
    with pytest.raises(ValueError, match="num_resamples=0"):
        intervals.bootstrap_intervals([0, 1], [0.1, 0.2], [0.5], num_resamples=0)
