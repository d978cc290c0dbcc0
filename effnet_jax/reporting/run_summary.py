"""One row per training run (and per ``effnet-eval`` report) for results tables.

    Run (config, run record, metrics records, eval reports)  ->  RunRow  ->  markdown / JSON

Every row says which data set the run trained on (``data``: 'synthetic' for a debug run,
whose numbers show only that the machinery works).

A training row reports the run's *last* validation evaluation (not its best, which
was picked on the same split) and the wall time summed over every invocation of
``effnet-train`` that built the run (the ``run`` records the loop writes).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from effnet_jax.labels import METRIC_NAMES as METRICS
from effnet_jax.labels import class_names
from effnet_jax.runs import Run


@dataclasses.dataclass
class RunRow:
    name: str  # the workdir's folder name, plus what the evaluation changed
    variant: str
    image_size: int | None
    recipe: str  # epochs, freezing, imbalance handling, regularisers
    split: str
    step: int
    threshold: float
    metrics: dict[str, Any]
    wall_seconds: float | None
    machine: str
    data: str = ""  # the data set the run trained on ('synthetic' for a debug run)
    # Bootstrap 95% intervals per metric ([low, high]) where effnet-eval computed them.
    intervals: dict[str, Any] = dataclasses.field(default_factory=dict)


def _image_size(run: Run, config: dict) -> int | None:
    """The run's image size: its run record, or the config for runs written before run records."""
    return run.record.image_size if run.record is not None else config.get("image_size")


def _data(run: Run, config: dict) -> str:
    """What the run trained on: the loop's record in its metrics, else (older runs) its config's data set."""
    return run.training_data or str(config.get("data", {}).get("name", ""))


def describe_recipe(config: dict) -> str:
    """The knobs that the results table compares, in a few words."""
    data = config.get("data", {})
    parts = []
    if config.get("num_train_steps", -1) > 0:
        parts.append(f"{config['num_train_steps']} steps")
    else:
        parts.append(f"{config.get('num_epochs'):g} ep")
    freeze = config.get("freeze_until") or ",".join(config.get("freeze") or ()) or "none"
    parts.append(f"frozen<{freeze}" if config.get("freeze_until") else f"frozen={freeze}")
    if data.get("balance", "none") != "none":
        parts.append(f"balance={data['balance']}")
    if config.get("class_weights", "none") != "none":
        parts.append(f"class_weights={config['class_weights']}")
    if config.get("label_smoothing"):
        parts.append(f"ls={config['label_smoothing']:g}")
    if config.get("gce_q"):
        parts.append(f"gce_q={config['gce_q']:g}")
    if config.get("focal_gamma"):
        parts.append(f"focal={config['focal_gamma']:g}")
    if config.get("mixup_alpha"):
        parts.append(f"mixup={config['mixup_alpha']:g}")
    if config.get("rank_loss_weight"):
        parts.append(f"rank={config['rank_loss_weight']:g}")
    if config.get("ema_decay"):
        parts.append(f"ema={config['ema_decay']:g}")
    augment = data.get("augment", {})
    if not augment.get("enabled", True):
        parts.append("no aug")
    elif augment:
        parts.append(f"rot={augment.get('rotation', 0):g} scale>={augment.get('scale_min', 1):g}")
    lr = config.get("optimizer", {}).get("learning_rate")
    if lr is not None:
        parts.append(f"lr={lr:g}")
    if data.get("split_protocol") == "pooled":
        parts.append("pooled " + "/".join(f"{f:g}" for f in data.get("pooled_fractions", ())))
    return ", ".join(parts)


def training_row(run: Run) -> RunRow:
    """The last validation evaluation of ``run``."""
    config = run.config.to_dict()
    val = run.records("validation")
    if not val:
        raise ValueError(f"{run.layout.metrics}: no validation records yet")
    last = val[-1]
    runs = run.records("run")
    wall = sum(r["wall_seconds"] for r in runs) if runs else None
    return RunRow(
        name=os.path.basename(os.path.normpath(run.workdir)),
        variant=config["model"]["name"],
        image_size=_image_size(run, config),
        recipe=describe_recipe(config),
        split="validation",
        step=int(last["step"]),
        # The trainer scores two classes at 0.5; more by their most probable class (no threshold).
        threshold=float(last.get("threshold", 0.5 if len(class_names(config.get("data", {}))) == 2 else math.nan)),
        metrics=_shown(last),
        wall_seconds=wall,
        machine=runs[-1].get("machine", "") if runs else "",
        data=_data(run, config),
    )


def evaluation_rows(run: Run) -> list[RunRow]:
    """One row per threshold of every ``effnet-eval`` report of ``run``, with its intervals."""
    config = run.config.to_dict()
    data = _data(run, config)
    rows = []
    for _, report in run.eval_reports(strict=True):
        for key, label in (
            ("operating", "t=operating"),
            ("threshold_0.5", "t=0.5"),
            ("threshold_training_prior", "t=train prior"),
            ("threshold_validation_youden", "t=val. Youden"),
            ("argmax", "most probable class, macro averages"),  # more than two classes
        ):
            m = report["metrics"].get(key)
            if m is None:
                continue  # reports written before that threshold existed
            extra = [f"eval {report['split']}", label]
            if report.get("tta") not in (None, "none"):
                extra.append(f"tta={report['tta']}")
            rows.append(
                RunRow(
                    name=f"{os.path.basename(os.path.normpath(run.workdir))} ({', '.join(extra)})",
                    variant=report["model"],
                    image_size=report.get("image_size"),
                    recipe=describe_recipe(config),
                    split=report["split"],
                    step=int(report["step"]),
                    threshold=float(m.get("threshold", math.nan)),
                    metrics=_shown(m),
                    wall_seconds=report.get("seconds"),
                    machine="",
                    data=data,
                    intervals={k: v for k, v in (m.get("ci95") or {}).items() if k in METRICS and v is not None},
                )
            )
    return rows


def _shown(metrics: dict) -> dict:
    # Past two classes recall is each class's sensitivity, macro averaged.
    return {k: metrics.get(k, metrics.get("sensitivity") if k == "recall" else None) for k in METRICS}


def _fmt(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


def _fmt_ci(value, interval) -> str:
    """``0.968 [0.951, 0.980]``: the value and its 95% interval, or the value alone."""
    text = _fmt(value)
    if text and interval:
        text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    return text


def _fmt_wall(seconds) -> str:
    if seconds is None:
        return ""
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def to_markdown(rows: list[RunRow]) -> str:
    headers = ["run", "data", "variant, px", "recipe", "split, step, t", *METRICS, "wall", "machine"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        cells = [
            r.name,
            r.data,
            f"{r.variant}, {r.image_size}",
            r.recipe,
            f"{r.split}, {r.step}, " + ("argmax" if math.isnan(r.threshold) else f"{r.threshold:.3f}"),
            *(_fmt_ci(r.metrics.get(k), r.intervals.get(k)) for k in METRICS),
            _fmt_wall(r.wall_seconds),
            r.machine,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
