"""Result records for the benchmarks: what ran (command, commit, machine, date) beside what it measured.

Each benchmark's ``--record=results/FILE.jsonl`` appends one record per measured row through
``write``; ``effnet-results tables --write`` then renders the tables of benchmarks/README.md.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys

from effnet_jax.reporting.results_tables import append_record


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def provenance(config: str, machine: str | None = None) -> dict:
    """The what-ran fields of a record made by this process."""
    return {
        "config": config,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "commit": _commit(),
        "machine": machine or f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": datetime.date.today().isoformat(),
    }


def write(path: str, rows: list[dict], config: str, machine: str | None = None) -> None:
    """Appends each row as a record to ``path`` (nothing when ``path`` is empty)."""
    if not path:
        return
    what_ran = provenance(config, machine)
    for row in rows:
        append_record(path, {**what_ran, **row})
    print(f"appended {len(rows)} records to {path}")
