"""Decision thresholds: the operating rule of a run, the training prior, the validation Youden threshold, a flag."""

from __future__ import annotations

import json
import os

import numpy as np

from effnet_jax.data import external, split_info
from effnet_jax.runs.metrics_log import read_metrics
from effnet_jax.train.losses import class_weights

EVAL_DIR = "eval"  # WORKDIR/eval/<split>_<step>/metrics.json: effnet-eval's reports


def training_prior_threshold(config, train_class_counts=None) -> float:
    """The PNEUMONIA share of what the model was trained on, counting class weights and balancing.

    A classifier fitted to a class prior pi outputs posteriors for that prior; the threshold
    that weighs a missed PNEUMONIA and a missed NORMAL equally (best balanced accuracy, at
    any deployment prior) is pi itself: 0.5 after oversampling, undersampling or
    'balanced' class weights, about 0.74 for plain training on Kermany's 1:3 train split.
    Unlike the validation Youden threshold it is not fitted to the validation images, so
    it does not tighten around in-distribution NORMALs (see README, Results).
    """
    if config.data.get("balance", "none") != "none":
        return 0.5
    # Runs record their training split's class counts (run record; older runs: their config);
    # without them the split is counted again.
    counts = train_class_counts or config.get("train_class_counts") or split_info(config.data, "train")["class_counts"]
    weights = class_weights(config.get("class_weights", "none"), list(counts))
    mass = np.asarray(counts, np.float64) * (1.0 if weights is None else np.asarray(weights, np.float64))
    return float(mass[1] / mass.sum())


def operating_threshold(workdir: str, step: int, config, train_class_counts=None) -> tuple[float, str]:
    """The run's operating threshold at ``step`` (``config.operating_threshold``) and how it was chosen.

    'external_sensitivity' is the highest threshold that kept sensitivity >=
    ``config.operating_sensitivity`` on the first external split when the trainer
    evaluated ``step`` (metrics.jsonl). Data from outside train/ is where a threshold
    fitted to validation fails (README, Thresholds). Without such a record (no external
    data, or a step that was not evaluated) it falls back to the training prior and says so.
    """
    rule = config.get("operating_threshold", "auto") or "auto"
    if rule == "auto":
        rule = "external_sensitivity" if external.split_names(config.data) else "training_prior"
    if rule == "external_sensitivity":
        sensitivity = float(config.get("operating_sensitivity", 0.95))
        for record in read_metrics(workdir, external.PREFIX):
            if record.get("step") == step and record.get("sensitivity_threshold") is not None:
                return float(record["sensitivity_threshold"]), (
                    f"external_sensitivity (sensitivity >= {sensitivity:g} on the external split at step {step})"
                )
        prior = training_prior_threshold(config, train_class_counts)
        return prior, f"training_prior (no external evaluation stored for step {step})"
    if rule == "training_prior":
        return training_prior_threshold(config, train_class_counts), "training_prior"
    raise ValueError(
        f"config.operating_threshold={rule!r}: expected 'auto', 'external_sensitivity' or 'training_prior'"
    )


def find_validation_threshold(workdir: str, step: int) -> tuple[float, str] | None:
    """The validation Youden threshold an earlier ``effnet-eval`` (without TTA) stored for ``step``, and its file."""
    root = os.path.join(os.path.abspath(workdir), EVAL_DIR)
    if not os.path.isdir(root):
        return None
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name, "metrics.json")
        if "_tta-" in name or not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                report = json.load(f)
        except (OSError, ValueError):
            continue
        if report.get("step") == step and report.get("validation_threshold") is not None:
            return float(report["validation_threshold"]), path
    return None


def resolve_threshold(
    workdir: str, step: int, threshold: float | str | None, config=None, train_class_counts=None
) -> tuple[float, str]:
    """The decision threshold and where it came from.

    A number is used as given; 'auto' (the default) is the run's operating threshold
    (``operating_threshold``); 'prior' the training-prior threshold;
    'youden' is the validation Youden threshold that ``effnet-eval`` stored for ``step``.
    """
    if threshold in (None, "", "auto", "prior"):
        if config is None:
            return 0.5, "default 0.5 (no run config to derive the training prior from)"
        if threshold == "prior":
            return training_prior_threshold(config, train_class_counts), "training_prior"
        return operating_threshold(workdir, step, config, train_class_counts)
    if threshold == "youden":
        found = find_validation_threshold(workdir, step)
        if found is None:
            raise ValueError(
                f"--threshold=youden: no validation threshold stored for step {step} in "
                f"{workdir}/eval; run effnet-eval --workdir={workdir} first"
            )
        return found[0], f"validation Youden ({found[1]})"
    try:
        value = float(threshold)
    except ValueError:
        raise ValueError(
            f"--threshold={threshold!r}: expected a probability in [0, 1], 'auto', 'prior' or 'youden'."
        ) from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"--threshold={threshold!r}: expected a probability in [0, 1], 'auto', 'prior' or 'youden'.")
    return value, "flag"
