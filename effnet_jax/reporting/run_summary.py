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
from effnet_jax.output_files import printable_line
from effnet_jax.runs import Run, values
from effnet_jax.runs.layout import CONFIG


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
    return run.training_data or str(_section(config, "data", run.layout.config).get("name", ""))


def _section(config: dict, key: str, where: str) -> dict:
    """``config[key]``, a JSON object (``{}`` when absent); a ValueError naming ``where`` and the key otherwise."""
    return values.mapping(config.get(key), f"{where}: {key}")


def describe_recipe(config: dict, where: str = CONFIG) -> str:
    """The knobs that the results table compares, in a few words.

    ``config`` is a run's config.json (``where``), which a downloaded run may fill with
    anything: a number shown here that is not a finite number is a ValueError naming the key.
    """
    data = _section(config, "data", where)
    augment = values.mapping(data.get("augment"), f"{where}: data.augment")
    optimizer = _section(config, "optimizer", where)

    def g(value, key: str) -> str:
        return f"{values.number(value, f'{where}: {key}'):g}"

    parts = []
    if values.number(config.get("num_train_steps", -1), f"{where}: num_train_steps") > 0:
        parts.append(f"{config['num_train_steps']} steps")
    else:
        parts.append(f"{g(config.get('num_epochs'), 'num_epochs')} ep")
    freeze = config.get("freeze_until") or ",".join(map(str, values.sequence(config.get("freeze"), f"{where}: freeze")))
    freeze = str(freeze or "none")
    parts.append(f"frozen<{freeze}" if config.get("freeze_until") else f"frozen={freeze}")
    if data.get("balance", "none") != "none":
        parts.append(f"balance={data['balance']}")
    if config.get("class_weights", "none") != "none":
        parts.append(f"class_weights={config['class_weights']}")
    for key, short in (
        ("label_smoothing", "ls"),
        ("gce_q", "gce_q"),
        ("focal_gamma", "focal"),
        ("mixup_alpha", "mixup"),
        ("rank_loss_weight", "rank"),
        ("ema_decay", "ema"),
    ):
        if config.get(key):
            parts.append(f"{short}={g(config[key], key)}")
    if not augment.get("enabled", True):
        parts.append("no aug")
    elif augment:
        rotation = g(augment.get("rotation", 0), "data.augment.rotation")
        parts.append(f"rot={rotation} scale>={g(augment.get('scale_min', 1), 'data.augment.scale_min')}")
    lr = optimizer.get("learning_rate")
    if lr is not None:
        parts.append(f"lr={g(lr, 'optimizer.learning_rate')}")
    if data.get("split_protocol") == "pooled":
        fractions = values.sequence(data.get("pooled_fractions"), f"{where}: data.pooled_fractions")
        parts.append("pooled " + "/".join(g(f, "data.pooled_fractions") for f in fractions))
    return ", ".join(parts)


def training_row(run: Run) -> RunRow:
    """The last validation evaluation of ``run``."""
    config = run.config.to_dict()
    where = run.layout.config
    val = run.records("validation")
    if not val:
        raise ValueError(f"{run.layout.metrics}: no validation records yet")
    last = val[-1]
    runs = run.records("run")
    # A downloaded metrics.jsonl may hold anything where the loop writes its wall time (null: not timed).
    walls = [r.get("wall_seconds") for r in runs]
    wall = (
        sum(values.number(w, f"{run.layout.metrics}: wall_seconds") for w in walls if w is not None) if runs else None
    )
    # The trainer scores two classes at 0.5; more by their most probable class (no threshold).
    threshold = values.shown(last.get("threshold"))
    if threshold is None:
        threshold = 0.5 if len(class_names(_section(config, "data", where))) == 2 else math.nan
    return RunRow(
        name=os.path.basename(os.path.normpath(run.workdir)),
        variant=values.text(_section(config, "model", where).get("name"), f"{where}: model.name"),
        image_size=_image_size(run, config),
        recipe=describe_recipe(config, where),
        split="validation",
        step=values.count(last.get("step"), f"{run.layout.metrics}: step"),
        threshold=threshold,
        metrics=_shown(last),
        wall_seconds=wall,
        machine=str(runs[-1].get("machine") or "") if runs else "",
        data=_data(run, config),
    )


def evaluation_rows(run: Run) -> list[RunRow]:
    """One row per threshold of every ``effnet-eval`` report of ``run``, with its intervals.

    The reports are checked as read (``values.check_report``): a field of another type than
    effnet-eval writes is a ValueError naming the report and the key.
    """
    config = run.config.to_dict()
    data = _data(run, config)
    recipe = describe_recipe(config, run.layout.config)
    rows = []
    for path, report in run.eval_reports(strict=True):
        split = values.text(report.get("split"), f"{path}: split")
        step = values.count(report.get("step"), f"{path}: step")
        for key, label in (
            ("operating", "t=operating"),
            ("threshold_0.5", "t=0.5"),
            ("threshold_training_prior", "t=train prior"),
            ("threshold_validation_youden", "t=val. Youden"),
            ("argmax", "most probable class, macro averages"),  # more than two classes
        ):
            m = (report.get("metrics") or {}).get(key)
            if m is None:
                continue  # reports written before that threshold existed
            extra = [f"eval {split}", label]
            if report.get("tta") not in (None, "none"):
                extra.append(f"tta={report['tta']}")
            rows.append(
                RunRow(
                    name=f"{os.path.basename(os.path.normpath(run.workdir))} ({', '.join(extra)})",
                    variant=report.get("model", ""),
                    image_size=report.get("image_size"),
                    recipe=recipe,
                    split=split,
                    step=step,
                    threshold=math.nan if m.get("threshold") is None else float(m["threshold"]),
                    metrics=_shown(m),
                    wall_seconds=report.get("seconds"),
                    machine="",
                    data=data,
                    intervals={k: v for k, v in (m.get("ci95") or {}).items() if k in METRICS and v is not None},
                )
            )
    return rows


def _shown(metrics: dict) -> dict:
    # Past two classes recall is each class's sensitivity, macro averaged. What is not a finite
    # number (null for NaN, "inf" as the loop logs it, anything a downloaded file holds) is unknown.
    return {k: values.shown(metrics.get(k, metrics.get("sensitivity") if k == "recall" else None)) for k in METRICS}


def _cell(value) -> str:
    """``value`` as one markdown table cell: a ``|``, a line break or an escape code from a run's files cannot
    split the row or reach the terminal (``printable_line`` escapes what is not printable)."""
    return printable_line(" ".join(str(value).split())).replace("|", "\\|")


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
        lines.append("| " + " | ".join(map(_cell, cells)) + " |")
    return "\n".join(lines)
