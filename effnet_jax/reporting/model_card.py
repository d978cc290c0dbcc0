"""A run's model card: what a run is, what it was trained and judged on, and what it is not for.

    Run (config, run record, metrics records, eval reports, calibration)  ->  MODEL_CARD.md

Written by effnet-train at the end of a run and rewritten by effnet-eval (and effnet-export)
from whatever the workdir holds then, so the card never states a number the run's own files
do not. It reads files only; nothing in the workdir is executed.
"""

from __future__ import annotations

import os

from effnet_jax.data.data_dir import no_external_set_line
from effnet_jax.data.provenance import provenance
from effnet_jax.labels import class_names, validate_class_names
from effnet_jax.output_files import markdown_code as _code
from effnet_jax.output_files import markdown_text as _text
from effnet_jax.output_files import replaced_output
from effnet_jax.reporting.run_summary import describe_recipe
from effnet_jax.runs import Run, values
from effnet_jax.runs.layout import CONFIG

INTENDED_USE = (
    "Research and education only: reproducing and studying pneumonia classification on chest X-rays. "
    "**Not a medical device. Not for clinical decisions**, diagnosis, triage or screening of real patients. "
    "It has not been validated prospectively, on adults, or on X-rays from other hospitals and scanners "
    "beyond what the numbers below state."
)
_LABELS = {
    "operating": "operating",
    "threshold_0.5": "0.5",
    "threshold_training_prior": "training prior",
    "threshold_validation_youden": "val. Youden",
}
_SHOWN = ("accuracy", "auc", "recall", "specificity", "f1")
_HEADERS = ("accuracy", "AUC", "sensitivity", "specificity", "F1")


def _numbers(value) -> str:
    """A list of integers as Python shows it (``[0, 1]``); anything else from the file as escaped text."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return str(list(value))
    return _text(value)


def _num(value, digits: int = 3) -> str:
    # Not a finite number (null for NaN, "inf" as the training loop logs it, or whatever a downloaded
    # metrics.jsonl holds): unknown. Reports are checked as read (values.check_report).
    value = values.shown(value)
    return "n/a" if value is None else f"{value:.{digits}f}"


def _with_ci(metrics: dict, name: str) -> str:
    interval = (metrics.get("ci95") or {}).get(name)
    text = _num(metrics.get(name))
    return f"{text} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else text


def eval_reports(run: Run) -> list[dict]:
    """Every effnet-eval report of the run, in name order (a malformed one is a ValueError naming it)."""
    return [report for _, report in run.eval_reports(strict=True) if isinstance(report.get("metrics"), dict)]


def _names(config: dict) -> tuple[str, ...]:
    # config.json of a downloaded run: a name list of other types is refused naming the key.
    data = values.mapping(config.get("data"), f"{CONFIG}: data")
    values.sequence(data.get("class_names"), f"{CONFIG}: data.class_names")
    return validate_class_names(class_names(data), f"{CONFIG}: data.class_names")


def _counted(names, counts) -> str:
    return ", ".join(f"{n} {c}" for n, c in zip(names, counts))


def _model_section(config: dict, run: dict | None) -> list[str]:
    model = values.mapping(config.get("model"), f"{CONFIG}: model")
    values.text(model.get("name"), f"{CONFIG}: model.name")
    size = (run or {}).get("image_size") or config.get("image_size")
    names = _names(config)
    lines = [
        "## Model",
        "",
        f"- Architecture: {_code(model.get('name'))} at {_text(size)} px, {len(names)} classes "
        f"({_text(', '.join(names))})",
        f"- Initial weights: {_text(model.get('pretrained') or 'random initialisation')}",
        f"- Recipe: {_text(describe_recipe(config))}; seed {_text(config.get('seed'))}; loss {_text(config.get('loss'))}",
    ]
    soup = config.get("soup")
    if isinstance(soup, dict):
        values.sequence(soup.get("members"), f"{CONFIG}: soup.members")
        what = (
            "Seed ensemble: the mean of the logits of"
            if soup.get("combine") == "logits"
            else "Model soup: the uniform average of the weights of"
        )
        lines.append(
            f"- {what} {len(soup.get('members', []))} runs, seeds "
            f"{_numbers(soup.get('seeds'))} at steps {_numbers(soup.get('steps'))} (each run's "
            f"{_text(soup.get('checkpoint'))} checkpoint; "
            "soup.json); the recipe above is the first run's"
        )
    if run:
        lines.append(f"- Input normalisation: mean {run.get('mean')}, std {run.get('std')} (run.json)")
    lines.append(
        f"- Checkpoint chosen by {_text(config.get('best_metric') or 'none')} on "
        f"{_code(config.get('select_split', 'validation'))};"
        f" operating threshold rule {_code(config.get('operating_threshold', 'auto'))}"
        f" (sensitivity >= {_text(config.get('operating_sensitivity', 0.95))} where external data exists)"
    )
    warning = no_external_set_line(config.get("data", {}))
    if warning:
        lines.append(f"- **{warning}**")
    return lines


def _adapted_lines(adapted: dict | None) -> list[str]:
    """What effnet-adapt changed (adapted.json), when it made this run."""
    if not isinstance(adapted, dict):
        return []
    return [
        f"- BatchNorm statistics re-estimated by effnet-adapt on {_text(adapted.get('images_used'))} unlabeled images "
        f"of {_code(adapted.get('images'))} (mix {_text(adapted.get('mix'))}; file list SHA-256 "
        f"{_text(str(adapted.get('files_sha256'))[:12])}...), from {_code(adapted.get('source'))} step "
        f"{_text(adapted.get('step'))}; weights, operating threshold and calibration "
        "are the source's (adapted.json)"
    ]


def _data_section(config: dict, run: dict | None, reports: list[dict]) -> list[str]:
    data = values.mapping(config.get("data"), f"{CONFIG}: data")
    name = data.get("name")
    origin = provenance(data)
    synthetic = name == "synthetic" or any(r.get("synthetic") for r in reports)
    seed = f", split seed {data.get('split_seed')}" if name == "chest_xray" else ""
    lines = [
        "## Data",
        "",
        f"- Source: {origin.source}; licence {origin.licence}",
        f"- {'**Synthetic data**: the numbers only show the machinery works' if synthetic else 'Real X-rays'}",
        f"- Split protocol: {origin.split_rule}{_text(seed)}",
    ]
    if data.get("exclude_list"):
        lines.append(f"- Exclusions: {_code(data['exclude_list'])}")
    counts = (run or {}).get("train_class_counts")
    if counts:
        lines.append(f"- train: {sum(counts)} images ({_text(_counted(_names(config), counts))})")
    seen = set()
    for report in reports:
        split, c = report.get("split"), report.get("class_counts")
        if split in seen or not c:
            continue
        seen.add(split)
        lines.append(f"- {_text(split)}: {sum(c)} images ({_text(_counted(_names(config), c))})")
    for i, folder in enumerate(values.sequence(data.get("external"), f"{CONFIG}: data.external")):
        lines.append(f"- external{'' if i == 0 else f'_{i}'}: {_code(folder)} (never trained on)")
    return lines


def _metrics_section(reports: list[dict], run: Run) -> list[str]:
    lines = ["## Metrics", ""]
    if not reports:
        lines.append("No effnet-eval report yet. The trainer's last evaluations (threshold 0.5, no intervals):")
        lines.append("")
        lines.append("| split | step | n | " + " | ".join(_HEADERS) + " |")
        lines.append("|---" * (3 + len(_HEADERS)) + "|")
        last = {}
        for record in run.metrics:
            if record.get("split") not in (None, "train", "run") and "auc" in record:
                last[record["split"]] = record
        for split, r in last.items():
            cells = [_text(split), _text(r.get("step")), _text(r.get("n", ""))] + [_num(r.get(k)) for k in _SHOWN]
            lines.append("| " + " | ".join(cells) + " |")
        return lines
    if any("argmax" in r["metrics"] for r in reports):
        return lines + _class_metrics_rows(reports)
    lines += [
        "Bootstrap 95% intervals in brackets (resampling patients where file names carry them).",
        "",
        "| split | step | threshold | t | n | " + " | ".join(_HEADERS) + " | Brier | ECE |",
        "|---" * (5 + len(_HEADERS) + 2) + "|",
    ]
    for report in reports:
        split = _text(report.get("split", "?")) + (
            f" (tta {_text(report['tta'])})" if report.get("tta") not in (None, "none") else ""
        )
        for key, label in _LABELS.items():
            m = report["metrics"].get(key)
            if not m:
                continue
            cells = [split, _text(report.get("step")), label, _num(m.get("threshold"), 4), _text(m.get("n"))]
            cells += [_with_ci(m, k) for k in _SHOWN]
            cells += [_num(m.get("brier")), _num(m.get("ece"))]
            lines.append("| " + " | ".join(cells) + " |")
    ci = next((m["ci95"] for r in reports for m in r["metrics"].values() if m and m.get("ci95")), None)
    if ci:
        lines += ["", f"Intervals: {ci['resamples']} resamples, percentile method, seeded (reproducible)."]
    return lines


def _class_metrics_rows(reports: list[dict]) -> list[str]:
    """More than two classes: per report, each class one vs rest and the macro average (the most probable class)."""
    shown = ("auc", "sensitivity", "specificity", "f1")
    lines = [
        "The most probable class is the label (no threshold); each class is scored one vs rest.",
        "",
        "| split | step | class | n | AUC | sensitivity | specificity | F1 |",
        "|---" * 8 + "|",
    ]
    for report in reports:
        m = report["metrics"].get("argmax")
        if not m:
            continue
        rows = [(c, v, v.get("support")) for c, v in m["per_class"].items()] + [("macro", m["macro"], m.get("n"))]
        for name, scores, n in rows:
            cells = [_text(report.get("split", "?")), _text(report.get("step")), _text(name), _text(n)]
            lines.append("| " + " | ".join(cells + [_num(scores.get(k)) for k in shown]) + " |")
    return lines


def _calibration_section(run: Run, reports: list[dict]) -> list[str]:
    lines = ["## Calibration", ""]
    calibration = run.calibration
    if calibration is None:
        lines.append(
            "No temperature fitted (`effnet-eval --calibrate=SPLIT` fits one); probabilities are the model's own."
        )
    else:
        lines.append(
            f"Temperature T = {calibration.temperature:.4f}, fitted on {_code(calibration.fitted_on)} "
            f"({calibration.n} images) at step {calibration.step}: ECE {calibration.ece_before:.4f} -> "
            f"{calibration.ece_after:.4f} there. Applied by effnet-eval, effnet-predict and effnet-export to "
            "that checkpoint; it changes probabilities, never labels (thresholds are mapped with it)."
        )
    applied = []
    for report in reports:
        before = (report.get("uncalibrated") or {}).get("ece")
        after = (report["metrics"].get("threshold_0.5") or {}).get("ece")
        if before is not None and report.get("temperature", 1.0) != 1.0:
            applied.append(
                f"- {_text(report.get('split'))} @ {_text(report.get('step'))}: ECE {_num(before)} -> {_num(after)}"
            )
    if applied:
        lines += ["", "ECE of evaluated splits before and after the temperature:", "", *applied]
    return lines


def _failure_section(config: dict, run: Run, reports: list[dict]) -> list[str]:
    lines = ["## Known failure modes", ""]
    by_split: dict[str, dict] = {}
    for report in reports:
        if report.get("tta") in (None, "none"):
            by_split[report.get("split")] = report
    val = by_split.get("validation")
    external = next((r for s, r in by_split.items() if s and s.startswith("external")), None)
    if val and external and "operating" in val["metrics"] and "operating" in external["metrics"]:
        va, xa = val["metrics"]["operating"], external["metrics"]["operating"]
        lines.append(
            f"- Distribution shift, measured: validation (from train/) AUC {_with_ci(va, 'auc')}, specificity "
            f"{_with_ci(va, 'specificity')}; {_text(external['split'])} (other X-rays) AUC {_with_ci(xa, 'auc')}, "
            f"specificity {_with_ci(xa, 'specificity')} at the operating threshold. Expect the external numbers, "
            "or worse, on new data."
        )
    else:
        records = {}
        for record in run.metrics:  # metrics_log checked step and split: an integer and a string, or absent
            if (
                "auc" in record
                and record.get("step") is not None
                and (record.get("split") or "").startswith(("validation", "external"))
            ):
                records.setdefault(record["step"], {})[record["split"]] = record
        both = [s for s, r in records.items() if "validation" in r and any(k.startswith("external") for k in r)]
        if both:
            step = max(both)
            ext = next(k for k in records[step] if k.startswith("external"))
            lines.append(
                f"- Distribution shift, measured at step {step}: validation AUC {_num(records[step]['validation']['auc'])}"
                f" against {_text(ext)} AUC {_num(records[step][ext]['auc'])}. Expect the external number, or worse, "
                "on new data."
            )
        else:
            lines.append(
                "- Distribution shift **not measured** for this run (no external data): validation is carved from "
                "train/ and flatters; across this project's recipes validation AUC sits near 1 while external AUC "
                "spreads far lower (docs/experiments/README.md, the sweep)."
            )
    lines.append(
        "- In this project's measurements (docs/experiments/README.md) NORMAL films from outside train/ are called "
        "PNEUMONIA far more often than validation shows; the operating threshold is set for sensitivity on "
        "external data, not on validation."
    )
    if config.get("data", {}).get("name") in ("chest_xray", "pneumonia_mnist"):
        lines.append(
            "- Trained on paediatric films of one hospital: adults, other scanners, lateral views and other "
            "diseases are outside what it has seen; it knows no class but NORMAL and PNEUMONIA."
        )
    return lines


def render_model_card(run: Run) -> str:
    """The model card's markdown, from what the run holds."""
    config = run.config.to_dict()
    record = run.record.to_json() if run.record is not None else None
    reports = eval_reports(run)
    name = os.path.basename(os.path.normpath(run.workdir))
    sections = [
        [
            f"# Model card: {_text(name)}",
            "",
            "Written from this run's files by effnet_jax (effnet-train, refreshed by effnet-eval and effnet-export).",
        ],
        ["## Intended use", "", INTENDED_USE],
        _model_section(config, record) + _adapted_lines(run.adapted),
        _data_section(config, record, reports),
        _metrics_section(reports, run),
        _calibration_section(run, reports),
        _failure_section(config, run, reports),
    ]
    return "\n\n".join("\n".join(s) for s in sections) + "\n"


def write_model_card(run: Run) -> str:
    """Writes the run's MODEL_CARD.md from what the run holds; returns its path."""
    path = run.layout.model_card
    text = render_model_card(run)
    with replaced_output(path) as f:  # a downloaded run may hold a link at either name: never written through
        f.write(text)
    return path
