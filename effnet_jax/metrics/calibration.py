"""Temperature scaling: one number T that makes P(PNEUMONIA) say what it means (Guo et al. 2017).

    P_calibrated = sigmoid(logit(P) / T)        (= softmax(logits / T)[1] for a 2-logit head)

T is fitted by minimising the negative log-likelihood over log T on a labelled split
(validation, or better an external one), stored in the run directory (``effnet_jax.runs.calibration``)
and applied by effnet-eval, effnet-predict and effnet-export to the checkpoint it was fitted on.

The map is strictly increasing, so it never changes which images a rule-derived threshold
separates: a threshold chosen on uncalibrated probabilities (the operating threshold, the
training prior, a Youden threshold) is carried through the same map, and every label,
sensitivity and specificity stays as it was. Only the probabilities, their Brier score and
ECE change. It works on the host in float64 from the model's probabilities, so an image
scored exactly at a threshold maps exactly onto the mapped threshold. (Sharpening, T < 1,
can push probabilities within 1e-16 of 1 onto 1.0 in float64: ties that move AUC a hair.)

With more than two classes (probabilities ``(N, C)``) the same T divides every log-probability:
``softmax(log P / T)``, which keeps each image's most probable class; ECE is then the
top-label ECE (confidence = the largest probability, right when that class is the label).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import optimize
from scipy.special import expit, log_softmax, logit, softmax

from effnet_jax.metrics.classification import check_inputs, expected_calibration_error

# Probabilities come from float32 softmax: log-odds beyond about +-16.6 all read as 0 or 1.
# Fitting clips to that range, so one saturated mistake cannot make the likelihood infinite.
_FLOAT32_EPS = 2.0**-24
_LOG_T_BOUNDS = (math.log(0.01), math.log(100.0))


def calibrate_probs(probs, temperature: float) -> np.ndarray:
    """``sigmoid(logit(p) / T)`` elementwise, in float64; T = 1 returns the input unchanged."""
    probs = np.asarray(probs, dtype=np.float64)
    temperature = float(temperature)
    if not temperature > 0.0 or not math.isfinite(temperature):
        raise ValueError(f"temperature={temperature}: expected a positive finite number")
    if temperature == 1.0:
        return probs
    if probs.ndim == 2:
        return softmax(np.log(np.clip(probs, _FLOAT32_EPS, 1.0)) / temperature, axis=1)
    return expit(logit(probs) / temperature)


def calibrate_threshold(threshold: float, temperature: float) -> float:
    """A probability threshold carried through the same map as the probabilities (same labels)."""
    return float(calibrate_probs(np.asarray([threshold], np.float64), temperature)[0])


def _nll(labels: np.ndarray, margins: np.ndarray, log_t: float) -> float:
    z = margins / math.exp(log_t)
    # -[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))] = log(1 + e^z) - y z, stable for any z.
    return float(np.mean(np.logaddexp(0.0, z) - labels * z))


def fit_temperature(labels, probs) -> float:
    """The T in [0.01, 100] minimising the negative log-likelihood of ``labels`` under ``calibrate_probs``.

    T > 1 softens an over-confident model, T < 1 sharpens an under-confident one. Needs
    both classes: with one class the likelihood keeps improving as T shrinks.
    """
    if np.ndim(probs) == 2:
        return _fit_temperature_classes(labels, probs)
    labels, probs = check_inputs(labels, probs)
    if not (labels.size and 0 < labels.sum() < labels.size):
        raise ValueError(
            f"fit_temperature: needs both classes, got {int(labels.sum())} PNEUMONIA of {labels.size} examples"
        )
    margins = logit(np.clip(probs, _FLOAT32_EPS, 1.0 - _FLOAT32_EPS))
    # The NLL is convex in 1/T (a one-feature logistic regression), hence unimodal in log T.
    result = optimize.minimize_scalar(
        lambda log_t: _nll(labels, margins, log_t), bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-8}
    )
    return float(math.exp(result.x))


def _fit_temperature_classes(labels, probs) -> float:
    labels = np.asarray(labels, np.int64).reshape(-1)
    log_p = np.log(np.clip(np.asarray(probs, np.float64), _FLOAT32_EPS, 1.0))
    if labels.size == 0:
        raise ValueError("fit_temperature: needs labelled examples, got none")

    def nll(log_t):
        return float(-np.mean(log_softmax(log_p / math.exp(log_t), axis=1)[np.arange(labels.size), labels]))

    result = optimize.minimize_scalar(nll, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-8})
    return float(math.exp(result.x))


def top_label_ece(labels, probs, num_bins: int = 15) -> float:
    """ECE of the most probable class: mean |accuracy - confidence| over equal-width confidence bins."""
    labels = np.asarray(labels, np.int64).reshape(-1)
    probs = np.asarray(probs, np.float64)
    if labels.size == 0:
        return math.nan
    return expected_calibration_error(np.argmax(probs, axis=1) == labels, probs.max(axis=1), num_bins)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A fitted temperature and where it was fitted: what a run's calibration file holds (``effnet_jax.runs.calibration``)."""

    temperature: float
    fitted_on: str  # the split T was fitted on
    step: int  # the checkpoint whose probabilities it was fitted to
    ece_before: float  # on fitted_on, before and after
    ece_after: float
    n: int  # images it was fitted on
    tta: str = "none"  # the test-time augmentation the fitted probabilities were averaged over

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def fit_calibration(labels, probs, fitted_on: str, step: int, tta: str = "none") -> Calibration:
    """Fits T on one split's probabilities and measures ECE on it before and after."""
    temperature = fit_temperature(labels, probs)
    ece = top_label_ece if np.ndim(probs) == 2 else expected_calibration_error
    return Calibration(
        temperature=temperature,
        fitted_on=fitted_on,
        step=int(step),
        ece_before=ece(labels, probs),
        ece_after=ece(labels, calibrate_probs(probs, temperature)),
        n=int(np.asarray(labels).size),
        tta=tta,
    )
