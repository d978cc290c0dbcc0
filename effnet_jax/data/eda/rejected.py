"""Training images whose label every given run rejects: suspected label noise, as an exclusion list.

The runs are scored on the training split (``effnet-eval --split=train``); an image to which
every run gives its own label a probability below ``max_prob`` is listed. The runs trained
on these images, so the rule is strict: a few epochs under strong augmentation fit little of
train/ by heart, and an image they all still reject is mislabelled or too ambiguous to teach.
The list is the format data.exclude_list reads (effnet_jax/data/exclusions.py); nothing is
deleted. Two classes (NORMAL, PNEUMONIA), as the chest_xray builder that applies it.
"""

from __future__ import annotations

import csv
import io
import math
import reprlib
from pathlib import Path

from effnet_jax import limits

CLASSES = ("NORMAL", "PNEUMONIA")
REASON = "label_rejected"
MAX_ROWS = 1_000_000  # a training split's predictions; more is not a report effnet-eval wrote


def read_predictions(report) -> dict[str, tuple[int, float]]:
    """{file name: (label, probability of PNEUMONIA)} from an effnet-eval output folder's predictions.csv."""
    path = Path(report).expanduser() / "predictions.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (score the run with effnet-eval --split=train --out_dir=...)")
    # A downloaded report may hold anything: a FIFO, a link to /dev/zero, a sparse file of GBs, bytes
    # that are not UTF-8 or a field past csv's limit are one line naming the file, read bounded.
    text = limits.read_text_file(str(path), "a predictions.csv")
    out = {}
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        if not reader.fieldnames or not {"file", "label", "prob_pneumonia"} <= set(reader.fieldnames):
            raise ValueError(
                f"{path}: columns {reprlib.repr(reader.fieldnames)}; expected file, label and prob_pneumonia "
                "(a two-class report)"
            )
        for i, row in enumerate(reader):
            if i >= MAX_ROWS:
                raise ValueError(f"{path}: more than {MAX_ROWS:,} rows")
            name = row["file"]
            if not name or Path(name).name != name or name in (".", ".."):
                raise ValueError(f"{path}: row {i + 1}: file {reprlib.repr(name)} is not a plain file name")
            try:
                if row["label"] not in ("0", "1"):  # as effnet-eval writes them (int() takes ' 1' and '0_1')
                    raise ValueError
                label, prob = int(row["label"]), float(row["prob_pneumonia"])
            except (TypeError, ValueError):
                raise ValueError(
                    f"{path}: row {i + 1}: label {reprlib.repr(row['label'])} / prob "
                    f"{reprlib.repr(row['prob_pneumonia'])}; expected 0 or 1 / [0, 1]"
                ) from None
            if label not in (0, 1) or not (math.isfinite(prob) and 0.0 <= prob <= 1.0):
                raise ValueError(f"{path}: row {i + 1}: label {label} / probability {prob}; expected 0 or 1 / [0, 1]")
            if name in out:
                raise ValueError(f"{path}: {name} appears twice")
            out[name] = (label, prob)
    except csv.Error as e:
        raise ValueError(f"{path}:{reader.reader.line_num}: not CSV as effnet-eval writes it ({e})") from None
    return out


def rejected_by_all(reports, data_dir, max_prob: float = 0.1) -> tuple[list[dict], int]:
    """(exclusion entries, images scored by every report): the images every report rejects."""
    if not 0.0 < max_prob <= 0.5:
        raise ValueError(f"--max_prob={max_prob}: expected a probability in (0, 0.5]")
    if not reports:
        raise ValueError("--reports: expected at least one effnet-eval output folder")
    runs = [read_predictions(r) for r in reports]
    train = Path(data_dir).expanduser() / "train"
    if not all((train / c).is_dir() for c in CLASSES):
        raise FileNotFoundError(f"{train}: expected {' and '.join(CLASSES)} folders (the chest_xray layout)")
    common = sorted(set(runs[0]).intersection(*runs[1:]))
    entries = []
    for name in common:
        labels = {run[name][0] for run in runs}
        if len(labels) > 1:
            raise ValueError(f"{name}: the reports give it different labels; were they scored on the same data?")
        label = labels.pop()
        given = [p if label == 1 else 1.0 - p for _, p in (run[name] for run in runs)]
        if max(given) >= max_prob:
            continue
        if not (train / CLASSES[label] / name).is_file():
            raise FileNotFoundError(f"{name}: not in {train / CLASSES[label]}; were the runs trained on {data_dir}?")
        entries.append(
            {
                "file": f"train/{CLASSES[label]}/{name}",
                "reason": REASON,
                "detail": "probability of its label: " + ", ".join(f"{g:.3f}" for g in given),
            }
        )
    return entries, len(common)
