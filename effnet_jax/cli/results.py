"""effnet-results: a results table (markdown or JSON) from training run directories.

    effnet-results WORKDIR [WORKDIR ...] [--eval] [--format=markdown|json]

One row per run: the data it trained on (synthetic for a debug run), its last validation
evaluation, recipe and summed wall time; with --eval, also one row per threshold of every
effnet-eval report in WORKDIR/eval/.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from absl import app, flags

from effnet_jax.cli.common import define_once, run_command

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS):
    define_once(
        flags.DEFINE_bool,
        "eval",
        False,
        "Add a row per threshold of each effnet-eval report in WORKDIR/eval/.",
        flag_values=fv,
    )
    define_once(flags.DEFINE_enum, "format", "markdown", ["markdown", "json"], "Output format.", flag_values=fv)


def main(argv):
    workdirs = argv[1:]
    if not workdirs:
        raise app.UsageError("effnet-results needs at least one training run directory.")
    from effnet_jax import runs
    from effnet_jax.reporting import run_summary

    rows = []
    try:
        for workdir in workdirs:
            run = runs.open(workdir, checkpoint=None)
            rows.append(run_summary.training_row(run))
            if FLAGS.eval:
                rows.extend(run_summary.evaluation_rows(run))
    except (FileNotFoundError, ValueError) as e:
        print(f"effnet-results: error: {e}", file=sys.stderr)
        return 1
    if FLAGS.format == "json":
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    else:
        print(run_summary.to_markdown(rows))
    return 0


def run():
    """Console-script entry point."""
    run_command(__doc__, define_flags, main)


if __name__ == "__main__":
    run()
