"""Reading a run's ``metrics.jsonl``: one JSON record per line, ``{"step", "split", ...}``.

The training loop writes it (``effnet_jax.runs.writer``); results tables and a
resumed run read it back. Every record carries ``data``: the data set the run trained
on ('synthetic' when no real data was at hand).
"""

from __future__ import annotations

import json
import logging

from etils import epath

from effnet_jax.runs.layout import Layout

log = logging.getLogger("effnet_jax.reporting")
_TORN_SAID: set[str] = set()


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
    lines = [line for line in path.read_bytes().decode("utf-8", "replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif number == len(lines):
            if str(path) not in _TORN_SAID:
                _TORN_SAID.add(str(path))
                log.warning("%s: its last line is cut short (%d bytes, not a record); ignoring it", path, len(line))
            return records, True
        else:
            raise ValueError(f"{path}: line {number} is not a JSON record (the file was edited or damaged)")
    return records, False


def training_data(workdir: str) -> str | None:
    """The data set a run trained on, as its loop recorded it ('synthetic', 'chest_xray', ...); None if unrecorded."""
    for record in reversed(read_metrics(workdir)):
        if record.get("data"):
            return str(record["data"])
    return None
