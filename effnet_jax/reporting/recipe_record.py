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
import io
import os
import reprlib

import numpy as np

import effnet_jax.limits as limits
from effnet_jax.labels import MAX_CLASSES, validate_class_names
from effnet_jax.metrics import held_out
from effnet_jax.metrics.classification import compute_metrics, sensitivity_threshold
from effnet_jax.runs import Run
from effnet_jax.runs.values import check_report, optional_number
from effnet_jax.runs.values import number as _number  # shared with the results table and card

KEPT = ("yes", "no", "reference", "baseline")
_MAX_PREDICTION_ROWS = 1_000_000  # an external set is hundreds of X-rays; a huge file is not effnet-eval's
_MAX_COLUMNS = MAX_CLASSES + 4  # index, file, label, predicted and a probability per class


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What ran, as results records say it (results_tables.PROVENANCE_KEYS)."""

    config: str
    command: str
    commit: str
    machine: str
    date: str = dataclasses.field(default_factory=lambda: datetime.date.today().isoformat())


def _report(run: Run, split: str, binary: bool = True, tta: str = "none") -> tuple[str, str, dict]:
    """``(folder name, path, metrics.json)`` of effnet-eval's report of ``split`` at the run's checkpoint with ``tta``.

    The folder is named as effnet-eval names it (``evaluation.output_dir``: a split such as
    ``../x`` or ``folder:PATH`` never leads out of ``eval/``), and the report must be of
    that split, step and views.
    """
    from effnet_jax.inference import evaluation  # jax
    from effnet_jax.inference import tta as tta_lib

    views = tta_lib.parse_tta(tta)
    name = os.path.basename(evaluation.output_dir(run, split, views))
    flag = f" --tta={views.spec()}" if views.num_views > 1 else ""
    path = run.layout.eval_report(name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: no effnet-eval report of split {split!r} at step {run.step} (the checkpoint "
            f"'{run.checkpoint}'); run effnet-eval --workdir={run.workdir} --split={split}{flag} first"
        )
    report = run.eval_report(name)
    if report.get("split") != split or report.get("step") != run.step:
        raise ValueError(
            f"{path}: a report of {reprlib.repr(report.get('split'))} at step {reprlib.repr(report.get('step'))}, "
            f"not {name}"
        )
    if report.get("tta", "none") != views.spec():
        raise ValueError(f"{path}: tta={reprlib.repr(report.get('tta'))}: expected {views.spec()!r}, its folder's")
    check_report(report, path)  # the types the results table and card read, checked the same way
    if binary and "operating" not in (report.get("metrics") or {}):
        raise ValueError(
            f"{path}: no metrics at the operating threshold (a report of more than two classes? "
            "record it as one class against the rest with --negative_class)"
        )
    return name, path, report


def _scored(report: dict, path: str) -> tuple[dict, float, dict | None]:
    """``(operating, threshold, at 0.5)`` as effnet-eval reported them.

    ``_report`` checked the report's types (``values.check_report``: numbers finite or null,
    intervals pairs of numbers); the numbers a record copies must also be there.
    """

    def point(key: str, names) -> dict:
        values = report["metrics"][key]
        return {n: _number(values.get(n), f"{path}: metrics.{key}.{n}") for n in names}

    operating = point("operating", ("auc", "accuracy", "recall", "specificity"))
    operating["ci95"] = {n: b for n, b in (report["metrics"]["operating"].get("ci95") or {}).items() if b}
    threshold = _number(report.get("operating_threshold"), f"{path}: operating_threshold")
    at_half = point("threshold_0.5", ("accuracy", "specificity")) if "threshold_0.5" in report["metrics"] else None
    return operating, threshold, at_half


def _read_predictions(path: str, column: str, label_of: dict, score) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, scores)`` of the report's predictions.csv: ``label_of[row label]`` and ``score(row[column])``.

    A downloaded run may hold anything there: the file is read whole, held to
    ``limits.object_limit()`` (a FIFO or a link to /dev/zero is refused), as UTF-8 CSV with at
    most effnet-eval's columns; each label must be one ``label_of`` knows and each
    probability a number in [0, 1]. Both classes need two rows (the held-out rule fits on one half).
    """
    text = limits.read_text_file(path, "a predictions.csv")
    reader = csv.reader(io.StringIO(text, newline=""))
    labels, scores = [], []
    try:
        header = next(reader, [])
        if len(header) > _MAX_COLUMNS or "label" not in header or column not in header:
            raise ValueError(
                f"{path}:1: header {reprlib.repr(header)}: expected effnet-eval's columns, 'label' and {column!r} "
                f"among them (at most {_MAX_COLUMNS})"
            )
        at_label, at_score = header.index("label"), header.index(column)
        for number, row in enumerate(reader, 2):
            if not row:
                continue
            if number > _MAX_PREDICTION_ROWS:
                raise ValueError(f"{path}: over {_MAX_PREDICTION_ROWS} rows; not a file effnet-eval wrote")
            try:
                if len(row) != len(header):
                    raise ValueError
                labels.append(label_of[row[at_label]])
                p = float(row[at_score])
                if not 0.0 <= p <= 1.0:  # NaN included
                    raise ValueError
                scores.append(score(p))
            except (KeyError, ValueError):
                raise ValueError(
                    f"{path}:{number}: expected {len(header)} fields, a label of {reprlib.repr(list(label_of))} "
                    f"and a probability in [0, 1] in {column}"
                ) from None
    except csv.Error as e:
        raise ValueError(f"{path}:{reader.line_num}: not CSV as effnet-eval writes it ({e})") from None
    counts = np.bincount(np.asarray(labels, np.int64), minlength=2)
    if counts.min() < 2:
        raise ValueError(
            f"{path}: {counts[0]} negative and {counts[1]} positive rows; a record needs at least 2 of each "
            "(the held-out rule fits on one half)"
        )
    return np.asarray(labels), np.asarray(scores)


def _one_against_rest(path: str, report_path: str, report: dict, negative: str) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, scores)`` of a report of more than two classes as ``negative`` against the rest.

    Label 1 is any class but ``negative`` and the score is 1 - P(negative): a model trained on
    NORMAL / BACTERIAL / VIRAL judged as a pneumonia detector.
    """
    names = report.get("class_names")
    if not isinstance(names, list):
        raise ValueError(f"{report_path}: class_names={reprlib.repr(names)}: expected a list of class names")
    names = validate_class_names(names, f"{report_path}: class_names")
    if negative not in names:
        raise ValueError(f"--negative_class={negative!r}: the report's classes are {', '.join(names)}")
    return _read_predictions(path, f"prob_{negative}", {n: int(n != negative) for n in names}, lambda p: 1.0 - p)


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
    run: Run,
    *,
    record_id: str,
    name: str,
    kept: str,
    tables: tuple[str, ...],
    provenance: Provenance,
    split="external",
    negative_class: str | None = None,
    tta: str = "none",
) -> dict:
    """The record of ``run``'s report on ``split`` at its chosen checkpoint (``runs.open(workdir, 'best')``).

    ``negative_class`` records a run of more than two classes as that class against the rest
    (``_one_against_rest``): its operating threshold fitted on the split as effnet-eval fits a
    binary run's, at ``config.operating_sensitivity``; such a record has no bootstrap intervals.
    ``tta`` reads the report effnet-eval wrote with that ``--tta`` (the record says which),
    its operating point refitted on those views the same way.
    """
    if kept not in KEPT:
        raise ValueError(f"kept={kept!r}: expected one of {', '.join(KEPT)}")
    folder, report_path, report = _report(run, split, binary=negative_class is None, tta=tta)
    predictions = run.eval_file(folder, "predictions.csv")
    if negative_class is None:
        labels, probs = _read_predictions(predictions, "prob_pneumonia", {"0": 0, "1": 1}, float)
    else:
        labels, probs = _one_against_rest(predictions, report_path, report, negative_class)
    if negative_class is None and report.get("tta", "none") == "none":
        operating, threshold, at_half = _scored(report, report_path)
    else:
        # effnet-eval scored these views at the run's own threshold (or, for more than two
        # classes, at none): the operating point is refitted on them as effnet-eval fits a run's.
        sensitivity = float(run.config.get("operating_sensitivity", 0.95))
        threshold = sensitivity_threshold(labels, probs, sensitivity)
        operating, at_half = compute_metrics(labels, probs, threshold), compute_metrics(labels, probs, 0.5)
    r3 = lambda v: round(float(v), 3)  # noqa: E731
    scored = {
        "auc": r3(operating["auc"]),
        "accuracy": r3(operating["accuracy"]),
        "sensitivity": r3(operating["recall"]),
        "specificity": r3(operating["specificity"]),
        "threshold": r3(threshold),
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
    if report.get("tta", "none") != "none":
        record["tta"] = report["tta"]  # the spec _report checked against its folder
    if negative_class is not None:
        record["judged_as"] = f"{negative_class} against the rest (score 1 - P({negative_class}))"
    # metrics.jsonl holds NaN as null; a downloaded one may hold anything else there.
    logged = lambda r, key: optional_number(r.get(key), f"{run.layout.metrics}: {key}")  # noqa: E731
    walls = [logged(r, "wall_seconds") for r in run.records("run") if r.get("wall_seconds") is not None]
    if walls:
        record["wall_minutes"] = round(walls[-1] / 60, 1)
    # One class against the rest is that class's one-vs-rest AUC, not the macro average.
    auc_key = "auc" if negative_class is None else f"auc_{negative_class}"
    validation = [r for r in run.records("validation") if r.get("step") == run.step and r.get(auc_key) is not None]
    if validation:
        record["validation"] = {"auc": r3(logged(validation[-1], auc_key))}
    record["kept"] = kept
    return record
