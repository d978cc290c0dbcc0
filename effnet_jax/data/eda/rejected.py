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
import re
import reprlib
from pathlib import Path

from effnet_jax import limits
from effnet_jax.output_files import csv_text, printable_line

CLASSES = ("NORMAL", "PNEUMONIA")
REASON = "label_rejected"
MAX_ROWS = 1_000_000  # a training split's predictions; more is not a report effnet-eval wrote
# The backslash escapes effnet-eval writes a file name with (output_files.printable_line): bytes that
# are not UTF-8 as \xNN, unprintable characters as Python's unicode_escape writes them.
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[ntr])")
_NAMED = {"n": "\n", "t": "\t", "r": "\r"}


def _plain(name: str) -> bool:
    return bool(name) and "\0" not in name and Path(name).name == name and name not in (".", "..")


def _unescaped(name: str, byte) -> str:
    """``name`` with printable_line's escapes read back; ``byte(n)``: what ``\\xNN`` of n >= 0x80 was."""

    def one(m):
        code = m.group(1)
        if code in _NAMED:
            return _NAMED[code]
        n = int(code[1:], 16)
        if n > 0x10FFFF:  # no character: not an escape printable_line writes
            return m.group(0)
        return byte(n) if code[0] == "x" and n >= 0x80 else chr(n)

    return _ESCAPE.sub(one, name)


def _file_in(folder: Path, name: str) -> str | None:
    """The name of the file in ``folder`` that ``name`` (as effnet-eval wrote it) is, or None.

    A backslash may be part of a real name, so the name as written is tried first, then read back
    with a ``\\xNN`` of 0x80 or more as a byte that was not UTF-8, then as that character.
    """
    tried = (name, _unescaped(name, lambda n: chr(0xDC00 + n)), _unescaped(name, chr))
    for candidate in dict.fromkeys(tried):
        if _plain(candidate) and (folder / candidate).is_file():
            return candidate
    return None


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
            name = csv_text(row["file"] or "")  # effnet-eval quotes a formula-like name: "'-1.jpeg"
            if not _plain(name):
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
                raise ValueError(f"{path}: {printable_line(name)} appears twice")
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
            raise ValueError(
                f"{printable_line(name)}: the reports give it different labels; were they scored on the same data?"
            )
        label = labels.pop()
        given = [p if label == 1 else 1.0 - p for _, p in (run[name] for run in runs)]
        if max(given) >= max_prob:
            continue
        found = _file_in(train / CLASSES[label], name)
        if found is None:
            raise FileNotFoundError(
                f"{printable_line(name)}: not in {train / CLASSES[label]}; were the runs trained on {data_dir}?"
            )
        entries.append(
            {
                "file": f"train/{CLASSES[label]}/{found}",
                "reason": REASON,
                "detail": "probability of its label: " + ", ".join(f"{g:.3f}" for g in given),
            }
        )
    return entries, len(common)
