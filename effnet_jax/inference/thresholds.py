"""Decision thresholds: the operating rule of a run, the training prior, the validation Youden threshold, a flag."""

from __future__ import annotations

import os

from effnet_jax.data import external, split_info
from effnet_jax.runs import Run
from effnet_jax.runs.record import prior_of


def training_prior_threshold(run: Run) -> float:
    """The PNEUMONIA share of what the run trained on (``RunRecord.training_prior``), counting class weights and balancing.

    Unlike the validation Youden threshold it is not fitted to the validation images, so
    it does not tighten around in-distribution NORMALs (see docs/experiments/README.md). A run that
    recorded no class counts has its training split counted again.
    """
    config = run.config
    prior = run.record.training_prior(config) if run.record is not None else None
    if prior is None:
        prior = prior_of(split_info(config.data, "train")["class_counts"], config.get("class_weights", "none"))
    return prior


def operating_threshold(run: Run) -> tuple[float, str]:
    """The run's operating threshold at its step (``config.operating_threshold``) and how it was chosen.

    'external_sensitivity' is the highest threshold that kept sensitivity >=
    ``config.operating_sensitivity`` on the first external split when the trainer
    evaluated the step (the run's metrics records). Data from outside train/ is where a
    threshold fitted to validation fails (docs/thresholds.md). Without such a record (no
    external data, or a step that was not evaluated) it falls back to the training prior
    and says so.
    """
    config, step = run.config, run.step
    rule = config.get("operating_threshold", "auto") or "auto"
    if rule == "auto":
        rule = "external_sensitivity" if external.split_names(config.data) else "training_prior"
    if rule == "external_sensitivity":
        sensitivity = float(config.get("operating_sensitivity", 0.95))
        for record in run.records(external.PREFIX):
            if record.get("step") == step and record.get("sensitivity_threshold") is not None:
                return float(record["sensitivity_threshold"]), (
                    f"external_sensitivity (sensitivity >= {sensitivity:g} on the external split at step {step})"
                )
        return training_prior_threshold(run), f"training_prior (no external evaluation stored for step {step})"
    if rule == "training_prior":
        return training_prior_threshold(run), "training_prior"
    raise ValueError(
        f"config.operating_threshold={rule!r}: expected 'auto', 'external_sensitivity' or 'training_prior'"
    )


def find_validation_threshold(run: Run) -> tuple[float, str] | None:
    """The validation Youden threshold an earlier ``effnet-eval`` (without TTA) stored for the run's step, and its file."""
    for path, report in run.eval_reports():
        if "_tta-" in os.path.basename(os.path.dirname(path)):
            continue
        if report.get("step") == run.step and report.get("validation_threshold") is not None:
            return float(report["validation_threshold"]), path
    return None


def resolve_threshold(run: Run, threshold: float | str | None) -> tuple[float, str]:
    """The decision threshold for the run's step and where it came from.

    A number is used as given; 'auto' (the default) is the run's operating threshold
    (``operating_threshold``); 'prior' the training-prior threshold;
    'youden' is the validation Youden threshold that ``effnet-eval`` stored for the step.
    """
    if threshold in (None, "", "auto", "prior"):
        if threshold == "prior":
            return training_prior_threshold(run), "training_prior"
        return operating_threshold(run)
    if threshold == "youden":
        found = find_validation_threshold(run)
        if found is None:
            raise ValueError(
                f"--threshold=youden: no validation threshold stored for step {run.step} in "
                f"{run.layout.eval}; run effnet-eval --workdir={run.workdir} first"
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
