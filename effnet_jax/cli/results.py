"""effnet-results: results tables from training run directories, or from the project's result records.

    effnet-results WORKDIR [WORKDIR ...] [--eval] [--format=markdown|json]
    effnet-results tables [--write | --check] [--results_dir=results] [--root=.]

One row per run: the data it trained on ('sample' or 'synthetic' for a debug run), its last
validation evaluation, recipe and summed wall time; with --eval, also one row per threshold of
every effnet-eval report in WORKDIR/eval/.

`tables` renders the tables of results/tables.json from the records in results/*.jsonl:
printed, or with --write rewritten into every .md file under --root between
<!-- results:NAME --> and <!-- /results:NAME -->; --check exits 1 naming each region
that differs from the records.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from absl import app, flags

from effnet_jax.cli.command import define_once, run_command

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
    define_once(flags.DEFINE_bool, "write", False, "tables: rewrite the marked regions of .md files.", flag_values=fv)
    define_once(flags.DEFINE_bool, "check", False, "tables: exit 1 when a marked region is stale.", flag_values=fv)
    define_once(flags.DEFINE_string, "results_dir", "results", "tables: the folder of records.", flag_values=fv)
    define_once(flags.DEFINE_string, "root", ".", "tables: where to look for .md files.", flag_values=fv)


def tables_main() -> int:
    """`effnet-results tables`: print the rendered tables, or write or check the .md regions."""
    import pathlib

    from effnet_jax.reporting import results_tables

    try:
        if not (FLAGS.write or FLAGS.check):
            for name, table in results_tables.render_all(pathlib.Path(FLAGS.results_dir)).items():
                print(f"<!-- results:{name} -->\n{table}\n<!-- /results:{name} -->\n")
            return 0
        stale = results_tables.update_files(pathlib.Path(FLAGS.root), pathlib.Path(FLAGS.results_dir), FLAGS.write)
    except results_tables.ResultsError as e:
        print(f"effnet-results: error: {e}", file=sys.stderr)
        return 1
    for region in stale:
        verb = "rewrote" if FLAGS.write else "stale"
        print(f"{verb}: {region.path} results:{region.table}", file=sys.stdout if FLAGS.write else sys.stderr)
    return 1 if stale and not FLAGS.write else 0


def main(argv):
    workdirs = argv[1:]
    if workdirs == ["tables"]:
        return tables_main()
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
