"""A results record of one trained and evaluated run: what ``effnet-results record`` appends to results/recipes.jsonl.

    Run (its chosen checkpoint)  +  eval/<split>_<step>/{metrics.json, predictions.csv}  ->  record

Every number comes from the run directory, none is typed: the effnet-eval report at the
checkpoint the run chose (metrics at the operating threshold with their bootstrap
intervals, and at 0.5), the operating rule fitted on one half of the split and scored on
the other (``metrics.held_out``: the column the project is judged by), the validation AUC
at that step, and the run's wall time. What the run directory cannot know (the record's
id and name, whether the recipe was kept, the command a reader should type, the commit
and machine) is given.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import os

import numpy as np

from effnet_jax.metrics import held_out
from effnet_jax.runs import Run

KEPT = ("yes", "no", "reference", "baseline")
_MAX_PREDICTION_ROWS = 1_000_000  # an external set is hundreds of X-rays; a huge file is not effnet-eval's


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What ran, as results records say it (results_tables.PROVENANCE_KEYS)."""

    config: str
    command: str
    commit: str
    machine: str
    date: str = dataclasses.field(default_factory=lambda: datetime.date.today().isoformat())


def _report(run: Run, split: str) -> tuple[str, dict]:
    """``(folder, metrics.json)`` of effnet-eval's report of ``split`` at the run's chosen checkpoint, no TTA."""
    name = f"{split}_{run.step}"
    path = run.layout.eval_report(name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: no effnet-eval report of split {split!r} at step {run.step} (the checkpoint "
            f"'{run.checkpoint}'); run effnet-eval --workdir={run.workdir} --split={split} first"
        )
    report = run.eval_report(name)
    if report.get("split") != split or report.get("step") != run.step:
        raise ValueError(f"{path}: a report of {report.get('split')!r} at step {report.get('step')}, not {name}")
    if "operating" not in report.get("metrics", {}):
        raise ValueError(f"{path}: no metrics at the operating threshold (a report of more than two classes?)")
    return os.path.dirname(path), report


def _predictions(folder: str) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, prob_pneumonia)`` of the report's predictions.csv."""
    path = os.path.join(folder, "predictions.csv")
    labels, probs = [], []
    with open(path, newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.DictReader(f), 2):
            if number > _MAX_PREDICTION_ROWS:
                raise ValueError(f"{path}: over {_MAX_PREDICTION_ROWS} rows; not a file effnet-eval wrote")
            try:
                labels.append(int(row["label"]))
                probs.append(float(row["prob_pneumonia"]))
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}:{number}: expected a 0/1 label and a probability") from None
    return np.asarray(labels), np.asarray(probs)


def short_model_name(name: str) -> str:
    """The name tables use for a variant: 'tf_efficientnet_lite0' -> 'Lite0', 'efficientnet_b2' -> 'B2'."""
    short = name.removeprefix("tf_").removeprefix("efficientnet_")
    if short == name:  # not an EfficientNet variant name: as it is
        return name
    return short[:1].upper() + short[1:]


def _model(run: Run) -> str:
    config = run.config
    text = f"{short_model_name(config.model.name)} {run.record.image_size} px"
    members = run.ensemble_size or (len(run.soup.get("members", ())) if run.soup else 0)
    if members > 1:
        combined = "logits averaged" if config.get("soup_combine") == "logits" else "weights averaged"
        text += f", {members} seeds ({combined})"
    return text


def recipe_record(
    run: Run, *, record_id: str, name: str, kept: str, tables: tuple[str, ...], provenance: Provenance, split="external"
) -> dict:
    """The record of ``run``'s report on ``split`` at its chosen checkpoint (``runs.open(workdir, 'best')``)."""
    if kept not in KEPT:
        raise ValueError(f"kept={kept!r}: expected one of {', '.join(KEPT)}")
    folder, report = _report(run, split)
    labels, probs = _predictions(folder)
    operating = report["metrics"]["operating"]
    r3 = lambda v: round(float(v), 3)  # noqa: E731
    scored = {
        "auc": r3(operating["auc"]),
        "accuracy": r3(operating["accuracy"]),
        "sensitivity": r3(operating["recall"]),
        "specificity": r3(operating["specificity"]),
        "threshold": r3(report["operating_threshold"]),
    }
    intervals = operating.get("ci95") or {}
    for key, source in (
        ("auc", "auc"),
        ("accuracy", "accuracy"),
        ("sensitivity", "recall"),
        ("specificity", "specificity"),
    ):
        if intervals.get(source):
            scored[f"{key}_ci"] = [r3(v) for v in intervals[source]]
    accuracy, sensitivity, specificity = held_out.held_out_rule(labels, probs, np.random.default_rng(0))
    scored["heldout"] = {"accuracy": r3(accuracy), "sensitivity": r3(sensitivity), "specificity": r3(specificity)}
    at_half = report["metrics"].get("threshold_0.5")
    if at_half:
        scored["at_05"] = {"accuracy": r3(at_half["accuracy"]), "specificity": r3(at_half["specificity"])}
    scored["images_correct"] = int(round(operating["accuracy"] * labels.size))
    scored["images"] = int(labels.size)

    record = {
        "id": record_id,
        "tables": list(tables),
        "name": name,
        **dataclasses.asdict(provenance),
        "runs": 1,
        split: scored,
        "model": _model(run),
    }
    walls = [r["wall_seconds"] for r in run.records("run") if "wall_seconds" in r]
    if walls:
        record["wall_minutes"] = round(walls[-1] / 60, 1)
    validation = [r for r in run.records("validation") if r.get("step") == run.step and "auc" in r]
    if validation:
        record["validation"] = {"auc": r3(validation[-1]["auc"])}
    record["kept"] = kept
    return record


def append_new(path: str, record: dict) -> None:
    """Appends ``record`` to the results file ``path``, refusing an id the file already holds."""
    from effnet_jax.reporting.results_tables import append_record

    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip() and json.loads(line).get("id") == record["id"]:
                    raise ValueError(f"{path}:{number}: a record with id {record['id']!r} exists already")
    append_record(path, record)
