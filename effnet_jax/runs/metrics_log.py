"""Reading a run's ``metrics.jsonl``: one JSON record per line, ``{"step", "split", ...}``.

The training loop writes it (``effnet_jax.runs.writer``); results tables and a
resumed run read it back. Every record carries ``data``: the data set the run trained
on ('synthetic' when no real data was at hand).
"""

from __future__ import annotations

import json

from etils import epath

from effnet_jax.runs.layout import Layout


def read_metrics(workdir: str, split: str | None = None) -> list[dict]:
    """The records of ``metrics.jsonl`` (optionally one split's), in order."""
    path = epath.Path(Layout(workdir).metrics)
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if split is None or r["split"] == split]


def training_data(workdir: str) -> str | None:
    """The data set a run trained on, as its loop recorded it ('synthetic', 'chest_xray', ...); None if unrecorded."""
    for record in reversed(read_metrics(workdir)):
        if record.get("data"):
            return str(record["data"])
    return None
