"""Values read from a downloaded run's files, checked before anything formats or sums them.

A run directory may come from anyone: where effnet_jax writes a number, a downloaded
``metrics.json``, ``metrics.jsonl`` or ``config.json`` may hold a string, a list, NaN,
``1e400`` or an integer of 400 digits (which no float holds). Each check here returns the
value or raises a ``ValueError`` of one line naming ``where`` (the file and key) and a
short ``reprlib`` form of the value. ``check_report`` walks what the results table and the
model card read of an effnet-eval report (``runs.Run.eval_reports`` applies it).
"""

from __future__ import annotations

import math
import reprlib

# What effnet-eval writes a number for in each entry of a report's ``metrics`` (null where it was NaN).
_ENTRY_NUMBERS = (
    "threshold",
    "n",
    "accuracy",
    "auc",
    "precision",
    "recall",
    "sensitivity",
    "specificity",
    "f1",
    "brier",
    "ece",
    "support",
)


def _bad(value, where: str, expected: str) -> ValueError:
    return ValueError(f"{where}={reprlib.repr(value)}: expected {expected}")


def is_number(value) -> bool:
    """Whether ``value`` is an int or float (not a bool) that a float holds finitely (10**400 is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past a float's range
        return False


def number(value, where: str) -> float:
    """``value`` as a float, or a ValueError naming ``where`` when it is not a finite number."""
    if not is_number(value):
        raise _bad(value, where, "a finite number")
    return float(value)


def optional_number(value, where: str) -> float | None:
    """``number``, or None for null (effnet_jax writes a NaN as null)."""
    return None if value is None else number(value, where)


def shown(value) -> float | None:
    """``value`` as a float to show, or None (shown as unknown) when it is not a finite number.

    For metrics.jsonl, whose writer logs NaN as null and infinities as the strings ``"inf"``.
    """
    return float(value) if is_number(value) else None


def count(value, where: str) -> int:
    """``value`` as an integer >= 0 (a step, a count), or a ValueError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise _bad(value, where, "an integer >= 0")
    return value


def text(value, where: str) -> str:
    """``value`` when it is a string, else a ValueError naming ``where``."""
    if not isinstance(value, str):
        raise _bad(value, where, "a string")
    return value


def mapping(value, where: str, optional: bool = True) -> dict:
    """``value`` when it is a JSON object (``{}`` for null or absent when ``optional``), else a ValueError."""
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise _bad(value, where, "a JSON object")
    return value


def sequence(value, where: str, optional: bool = True) -> list:
    """``value`` when it is a JSON list (``[]`` for null or absent when ``optional``), else a ValueError."""
    if value is None and optional:
        return []
    if not isinstance(value, list):
        raise _bad(value, where, "a list")
    return value


def _check_entry(entry, where: str) -> None:
    """One entry of ``metrics`` (``operating``, ``threshold_0.5``, ...): its numbers and intervals."""
    entry = mapping(entry, where)
    for key in _ENTRY_NUMBERS:
        optional_number(entry.get(key), f"{where}.{key}")
    intervals = mapping(entry.get("ci95"), f"{where}.ci95")
    for key, bounds in intervals.items():
        if key in _ENTRY_NUMBERS and bounds is not None:
            if not (isinstance(bounds, list) and len(bounds) == 2 and all(map(is_number, bounds))):
                raise _bad(bounds, f"{where}.ci95.{key}", "[low, high], two finite numbers")
    if intervals.get("resamples") is not None:
        count(intervals["resamples"], f"{where}.ci95.resamples")


def check_report(report, path: str) -> dict:
    """``report`` (the effnet-eval report at ``path``) when what the results table and model card read is well typed.

    ``metrics`` as effnet-eval writes it, ``split``, ``step`` and ``validation_threshold`` where present; each entry of ``metrics``
    an object of finite numbers or nulls, its ``ci95`` pairs of numbers; the fields shown
    beside them (``model``, ``image_size``, ``tta``, ``seconds``, ``class_counts``,
    ``temperature``, ``uncalibrated``) of their types where present. A ValueError naming
    ``path`` and the key otherwise.
    """
    if not isinstance(report, dict):
        raise ValueError(f"{path}: a {type(report).__name__}, expected a JSON object")
    if "split" in report:  # the results table needs both; the model card shows '?' for either
        text(report["split"], f"{path}: split")
    if "step" in report:
        count(report["step"], f"{path}: step")
    for key in ("model", "tta"):
        if key in report:
            text(report[key], f"{path}: {key}")
    if report.get("image_size") is not None:
        count(report["image_size"], f"{path}: image_size")
    for key in ("seconds", "temperature"):
        optional_number(report.get(key), f"{path}: {key}")
    for i, n in enumerate(sequence(report.get("class_counts"), f"{path}: class_counts")):
        count(n, f"{path}: class_counts[{i}]")
    for key, value in mapping(report.get("uncalibrated"), f"{path}: uncalibrated").items():
        if key in _ENTRY_NUMBERS:
            optional_number(value, f"{path}: uncalibrated.{key}")
    # Optional: a report read only for its stored threshold (inference.thresholds) needs no metrics.
    optional_number(report.get("validation_threshold"), f"{path}: validation_threshold")
    metrics = mapping(report.get("metrics"), f"{path}: metrics")
    for key, entry in metrics.items():
        where = f"{path}: metrics.{key}"
        if key != "argmax":
            _check_entry(entry, where)
            continue
        entry = mapping(entry, where)
        for name, values in mapping(entry.get("per_class"), f"{where}.per_class", optional=False).items():
            _check_entry(values, f"{where}.per_class.{name}")
        _check_entry(mapping(entry.get("macro"), f"{where}.macro", optional=False), f"{where}.macro")
        optional_number(entry.get("n"), f"{where}.n")
    return report
