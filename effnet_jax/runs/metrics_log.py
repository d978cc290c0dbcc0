"""Reading a run's ``metrics.jsonl``: one JSON record per line, ``{"step", "split", ...}``.

The training loop writes it (``effnet_jax.runs.writer``); results tables and a
resumed run read it back. Every record carries ``data``: the data set the run trained
on ('synthetic' when no real data was at hand).
"""

from __future__ import annotations

import logging
import os
import reprlib

from etils import epath

import effnet_jax.limits as limits
from effnet_jax.runs.layout import Layout
from effnet_jax.weights.readers import parse_json

log = logging.getLogger("effnet_jax.reporting")
_TORN_SAID: set[str] = set()

# A run logs a record every ``log_every_steps`` (10 by default): 500,000 records is five million
# steps. Each line becomes a dict: a downloaded file of ten million ``{}`` lines (28 MB) took
# 45 s and 1.7 GB to read, so the lines are counted, and the bytes held to an eighth of the
# budget (64 MiB by default, about 200,000 records as the loop writes them), before any is parsed.
MAX_RECORDS = 500_000
_BYTES_SHARE = 8


def read_metrics(workdir: str, split: str | None = None) -> list[dict]:
    """The records of ``metrics.jsonl`` (optionally one split's), in order.

    A last line cut short (a run killed or a disk filled mid-write) is left out, and said
    once in a log line; the resumed run rewrites the file without it (``writer.truncate_after``).
    """
    records, _ = read_metrics_file(workdir)
    return [r for r in records if split is None or r.get("split") == split]


def read_metrics_file(workdir: str) -> tuple[list[dict], bool]:
    """``(records, torn)``: every whole record of ``metrics.jsonl``, and whether its last line was torn."""
    path = epath.Path(Layout(workdir).metrics)
    if not path.exists():
        return [], False
    if "://" not in str(path):
        # A downloaded run's file may be a sparse file of GBs: refused from its size, before it is read
        # (a long run writes a few MB); a FIFO would block the read forever (checked on the open file).
        with limits.open_regular_file(str(path)) as f:
            size = os.fstat(f.fileno()).st_size
            limits.check(path, size, "the metrics log", ValueError, limits.budget() // _BYTES_SHARE)
            data = f.read(size + 1)
    else:
        data = path.read_bytes()
    if data.count(b"\n") > MAX_RECORDS:
        raise ValueError(f"{path}: more than {MAX_RECORDS:,} lines; not a metrics log a run writes")
    lines = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = parse_json(line, f"{path}: line {number}")
        except ValueError:  # not JSON, or nested past limits.MAX_NESTING
            record = None
        if isinstance(record, dict) and not _record_problem(record):
            records.append(record)
        elif isinstance(record, dict):
            raise ValueError(f"{path}: line {number}: {_record_problem(record)}")
        elif number == len(lines):
            if str(path) not in _TORN_SAID:
                _TORN_SAID.add(str(path))
                log.warning("%s: its last line is cut short (%d bytes, not a record); ignoring it", path, len(line))
            return records, True
        else:
            raise ValueError(f"{path}: line {number} is not a JSON record (the file was edited or damaged)")
    return records, False


def _record_problem(record: dict) -> str | None:
    """What makes ``record`` unlike any the loop writes (its step and split are read everywhere), or None."""
    step, split = record.get("step"), record.get("split")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        return f"step={reprlib.repr(step)}: expected an integer >= 0"
    if split is not None and not isinstance(split, str):
        return f"split={reprlib.repr(split)}: expected a string"
    return None


def training_data(workdir: str) -> str | None:
    """The data set a run trained on, as its loop recorded it ('synthetic', 'chest_xray', ...); None if unrecorded."""
    for record in reversed(read_metrics(workdir)):
        if record.get("data"):
            return str(record["data"])
    return None
