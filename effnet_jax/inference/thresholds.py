"""Decision thresholds: the training prior, the validation Youden threshold ``effnet-eval`` stored, a flag."""

from __future__ import annotations

import json
import os

import numpy as np

from effnet_jax.data import split_info
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


def resolve_threshold(workdir: str, step: int, threshold: float | str | None, config=None,
                      train_class_counts=None) -> tuple[float, str]:
    """The decision threshold and where it came from.

    A number is used as given; 'auto' (the default) is the training-prior threshold of
    the run (0.5 for balanced training; ``training_prior_threshold``);
    'youden' is the validation Youden threshold that ``effnet-eval`` stored for ``step``.
    """
    if threshold in (None, "", "auto"):
        if config is None:
            return 0.5, "default 0.5 (no run config to derive the training prior from)"
        return training_prior_threshold(config, train_class_counts), "training prior"
    if threshold == "youden":
        found = find_validation_threshold(workdir, step)
        if found is None:
            raise ValueError(f"--threshold=youden: no validation threshold stored for step {step} in "
                             f"{workdir}/eval; run effnet-eval --workdir={workdir} first")
        return found[0], f"validation Youden ({found[1]})"
    try:
        value = float(threshold)
    except ValueError:
        raise ValueError(f"--threshold={threshold!r}: expected a probability in [0, 1], 'auto' or 'youden'.") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"--threshold={threshold!r}: expected a probability in [0, 1], 'auto' or 'youden'.")
    return value, "flag"
