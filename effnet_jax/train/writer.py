"""Metrics out: JSON lines and TensorBoard event files in the workdir (process 0 only)."""

from __future__ import annotations

import json
import math
import os
import time

import jax


class MetricWriter:
    """Appends ``{"step", "split", ...}`` lines to ``metrics.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str, extra: dict | None = None):
        self.active = jax.process_index() == 0
        self.extra = dict(extra or {})
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.active:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, metrics: dict):
        """One record; non-scalar values (confusion matrices) go to JSON only."""
        if not self.active:
            return
        record = {"step": int(step), "split": split, "time": round(time.time(), 3), **self.extra}
        for k, v in metrics.items():
            record[k] = _json_value(v)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self._tb.add_scalar(f"{split}/{k}", v, int(step))
        with open(self.path, "a") as f:
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


def truncate_after(workdir: str, step: int):
    """Drops records after ``step``: a resumed run redoes those steps and writes them again."""
    if jax.process_index() != 0:
        return
    records = read_metrics(workdir)
    kept = [r for r in records if r["step"] <= step]
    if len(kept) != len(records):
        path = os.path.join(workdir, "metrics.jsonl")
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(path + ".tmp", path)


def read_metrics(workdir: str, split: str | None = None) -> list[dict]:
    """The records of ``metrics.jsonl`` (optionally one split's), in order."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if split is None or r["split"] == split]
