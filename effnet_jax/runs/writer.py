"""Metrics out: JSON lines and TensorBoard event files in the workdir (process 0 only).

Works on local and remote (``gs://``) workdirs: locally ``metrics.jsonl`` is appended
to; remotely it is rewritten whole on each record (object stores cannot append).
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
from etils import epath

from effnet_jax.output_files import open_output
from effnet_jax.runs.layout import Layout
from effnet_jax.runs.metrics_log import read_metrics, read_metrics_file


class MetricWriter:
    """Appends ``{"step", "split", ...}`` lines to ``metrics.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str, extra: dict | None = None):
        self.active = jax.process_index() == 0
        self.extra = dict(extra or {})
        self.path = Layout(workdir).metrics
        remote = "://" in self.path
        self._records = read_metrics(workdir) if self.active and remote else []
        self._tb = None
        if self.active:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(Layout(workdir).tensorboard)

    def write(self, step: int, split: str, metrics: dict):
        """One record; non-scalar values (confusion matrices) go to JSON only."""
        if not self.active:
            return
        record = {"step": int(step), "split": split, "time": round(time.time(), 3), **self.extra}
        for k, v in metrics.items():
            record[k] = _json_value(v)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self._tb.add_scalar(f"{split}/{k}", v, int(step))
        if "://" in self.path:
            self._records.append(record)
            _write_all(self.path, self._records)
        else:
            with open_output(self.path, "a") as f:  # never through a link planted in a downloaded run
                f.write(json.dumps(record) + "\n")

    def close(self):
        if self._tb is not None:
            self._tb.close()


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def _write_all(path: str, records: list[dict]):
    # Write-then-rename locally, so a kill mid-write never leaves half a file.
    text = "".join(json.dumps(r) + "\n" for r in records)
    if "://" in path:
        epath.Path(path).write_text(text)
        return
    with open_output(path + ".tmp") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def truncate_after(workdir: str, step: int):
    """Drops records after ``step``: a resumed run redoes those steps and writes them again."""
    if jax.process_index() != 0:
        return
    records, torn = read_metrics_file(workdir)
    # A record without a step (a downloaded or edited file; the loop writes one in each) is kept as it is.
    kept = [r for r in records if r.get("step") is None or r["step"] <= step]
    if torn or len(kept) != len(records):  # a torn last line goes too: appending to it would glue two records
        _write_all(Layout(workdir).metrics, kept)
