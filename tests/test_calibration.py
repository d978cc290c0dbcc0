"""Temperature scaling: the fit, the map, thresholds carried through it, calibration.json."""

import json

import numpy as np
import pytest
from scipy.special import expit, softmax

from effnet_jax.metrics import calibration as cal
from effnet_jax.metrics.classification import (
    compute_metrics,
    expected_calibration_error,
    sensitivity_threshold,
    youden_threshold,
)
from effnet_jax.runs import calibration as calibration_file
from effnet_jax.runs.layout import Layout


def model_scores(n=2000, confidence=4.0, seed=0):
    """Labels drawn from true log-odds d; the 'model' reports confidence * d (over-confident when > 1).

    Probabilities are rounded to float32, as the device computes them.
    """
    rng = np.random.default_rng(seed)
    d = rng.normal(0.0, 2.0, n)
    labels = (rng.random(n) < expit(d)).astype(np.int64)
    return labels, expit(confidence * d).astype(np.float32).astype(np.float64)


def test_overconfident_model_gets_t_above_one_and_lower_ece():
    labels, probs = model_scores(confidence=4.0)
    t = cal.fit_temperature(labels, probs)
    assert 3.0 < t < 5.5  # the true over-confidence is 4
    after = cal.calibrate_probs(probs, t)
    assert expected_calibration_error(labels, after) < expected_calibration_error(labels, probs) / 3


def test_underconfident_model_gets_t_below_one():
    labels, probs = model_scores(confidence=0.5)
    assert 0.35 < cal.fit_temperature(labels, probs) < 0.7


def test_temperature_one_is_a_no_op():
    _, probs = model_scores(50)
    out = cal.calibrate_probs(probs, 1.0)
    np.testing.assert_array_equal(out, probs)
    assert cal.calibrate_threshold(0.8125, 1.0) == 0.8125


def test_the_map_is_softmax_of_logits_over_t():
    logits = np.random.default_rng(1).normal(0, 3, (20, 2))
    p = softmax(logits, axis=1)[:, 1]
    np.testing.assert_allclose(cal.calibrate_probs(p, 2.5), softmax(logits / 2.5, axis=1)[:, 1], rtol=1e-12)
    assert cal.calibrate_threshold(0.5, 2.5) == 0.5  # logit 0 is a fixed point
    assert cal.calibrate_probs(np.array([0.0, 1.0]), 3.0).tolist() == [0.0, 1.0]  # saturated stay saturated


@pytest.mark.parametrize("temperature", [0.3, 1.7, 4.0, 25.0])
def test_operating_point_is_unchanged_when_its_threshold_is_mapped(temperature):
    labels, probs = model_scores(600, seed=2)
    for t in (sensitivity_threshold(labels, probs, 0.95), youden_threshold(labels, probs), 0.5, 0.74):
        before = compute_metrics(labels, probs, t)
        after = compute_metrics(
            labels, cal.calibrate_probs(probs, temperature), cal.calibrate_threshold(t, temperature)
        )
        assert after["confusion_matrix"] == before["confusion_matrix"]
        assert (after["recall"], after["specificity"]) == (before["recall"], before["specificity"])
        if temperature > 1:
            assert after["auc"] == before["auc"]
        else:
            # Sharpening pushes probabilities above 1 - 1e-16 onto 1.0 in float64: new ties, AUC moves a little.
            assert after["auc"] == pytest.approx(before["auc"], abs=1e-3)


def test_fit_needs_both_classes():
    with pytest.raises(ValueError, match="needs both classes, got 3 PNEUMONIA of 3"):
        cal.fit_temperature([1, 1, 1], [0.9, 0.8, 0.7])


def test_calibration_file_round_trip_and_step_rule(tmp_path):
    labels, probs = model_scores(300)
    fitted = cal.fit_calibration(labels, probs, "external", step=42)
    assert fitted.ece_after < fitted.ece_before and fitted.n == 300
    path = calibration_file.write_calibration(Layout(str(tmp_path)), fitted)
    blob = json.loads(open(path).read())
    # The format effnet-export reads.
    assert {"temperature", "fitted_on", "step", "ece_before", "ece_after", "n"} <= set(blob)
    assert blob["fitted_on"] == "external" and blob["step"] == 42
    read = calibration_file.read_calibration(Layout(str(tmp_path)))
    assert read == fitted
    t, note = calibration_file.temperature_for_step(read, 42)
    assert t == fitted.temperature and "fitted on external" in note
    assert calibration_file.temperature_for_step(read, 43) == (
        1.0,
        "uncalibrated (calibration.json was fitted at step 42, not 43)",
    )
    assert calibration_file.read_calibration(Layout(str(tmp_path / "nowhere"))) is None
    assert calibration_file.temperature_for_step(None, 42) == (1.0, "uncalibrated (no calibration.json)")


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not a valid calibration file"),
        (
            '{"temperature": -1, "fitted_on": "v", "step": 1, "ece_before": 0, "ece_after": 0, "n": 1}',
            "temperature=-1.0",
        ),
        ('{"step": 1}', "KeyError"),
    ],
)
def test_a_bad_calibration_file_is_an_error_naming_it(tmp_path, content, message):
    (tmp_path / "calibration.json").write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        calibration_file.read_calibration(Layout(str(tmp_path)))
    assert str(tmp_path / "calibration.json") in str(info.value)
