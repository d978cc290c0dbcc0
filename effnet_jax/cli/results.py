"""effnet-results: results tables from training run directories, or from the project's result records.

    effnet-results WORKDIR [WORKDIR ...] [--eval] [--format=markdown|json]
    effnet-results tables [--write | --check] [--results_dir=results] [--root=.]
    effnet-results record WORKDIR --id=ID --name=TEXT --kept=yes|no|reference --run_command=CMD
        --run_config=configs/X.py [--tables=tried] [--split=external] [--checkpoint=best] [--tta=none]
        [--commit=SHA] [--machine=TEXT] [--negative_class=NORMAL] [--out=results/recipes.jsonl]

One row per run: the data it trained on ('sample' or 'synthetic' for a debug run), its last
validation evaluation, recipe and summed wall time; with --eval, also one row per threshold of
every effnet-eval report in WORKDIR/eval/.

`tables` renders the tables of results/tables.json from the records in results/*.jsonl:
printed, or with --write rewritten into every .md file under --root between
<!-- results:NAME --> and <!-- /results:NAME -->; --check exits 1 naming each region
that differs from the records.

`record` appends the record of an evaluated run (docs/experiments/README.md): every number
from WORKDIR (effnet-eval's report of --split at the checkpoint, the operating rule fitted on
one half and scored on the other, the validation AUC, the wall time), the rest from the
flags. --commit defaults to the code the run recorded (else this checkout's HEAD), --machine
to the run's own line. --negative_class=NORMAL records a run of more than two classes (say
NORMAL / BACTERIAL / VIRAL) as a detector of every class but NORMAL, scored 1 - P(NORMAL).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from absl import app, flags

from effnet_jax.cli.command import define_once, run_command

FLAGS = flags.FLAGS


# `effnet-results record`'s flags: name, default, meaning.
_RECORD_FLAGS = (
    ("id", None, "the record's id (unique in --out)."),
    ("name", None, "what the row says the recipe was."),
    ("kept", None, "yes, no, reference or baseline."),
    ("tables", ["tried"], "the tables the row belongs to (results/tables.json); repeat it or separate by commas."),
    ("run_command", None, "the command that trained and evaluated the run."),
    ("run_config", None, "the config file it trained (configs/*.py)."),
    ("split", "external", "the evaluated split the record reports."),
    ("checkpoint", "best", "the checkpoint whose report is read ('best', 'latest', a step)."),
    ("tta", "none", "the test-time augmentation of the report to read (effnet-eval --tta)."),
    (
        "negative_class",
        None,
        "a run of more than two classes recorded as this class against the rest (score 1 - P(class)).",
    ),
    ("commit", None, "the code's commit (default: the one the run recorded, else this checkout's HEAD)."),
    ("machine", None, "the machine (default: the run's own line)."),
    ("out", "results/recipes.jsonl", "the results file to append to."),
)


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
    for name, default, meaning in _RECORD_FLAGS:
        define = flags.DEFINE_multi_string if isinstance(default, list) else flags.DEFINE_string
        define_once(define, name, default, "record: " + meaning, flag_values=fv)


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


# The trainer's machine line is at most ~200 characters (a CPU model is cut at 100), its code a commit.
MAX_RUN_LINE = 300


def _last_run_line(run, key: str) -> str | None:
    """``key`` of the run's last 'run' metrics line that has it (a resumed run writes one per invocation).

    Copied into a results record that every table renders: a downloaded run's line of megabytes
    is refused naming the file, not carried into the record.
    """
    value = next((r[key] for r in reversed(run.records("run")) if r.get(key) and isinstance(r[key], str)), None)
    if value is not None and len(value) > MAX_RUN_LINE:
        flag = "--machine" if key == "machine" else "--commit"
        raise ValueError(
            f"{run.layout.metrics}: the run's {key} is {len(value):,} characters, more than the {MAX_RUN_LINE} "
            f"a trainer writes; say which with {flag}"
        )
    return value


def _tables(values: list[str], out: str) -> tuple[str, ...]:
    """--tables as given (repeated or comma-separated), each a table that renders records of ``out``.

    A misspelt table would put the row in no table at all; without a tables.json beside
    ``out`` (a results file of the user's own) any name goes.
    """
    import pathlib

    from effnet_jax.reporting import results_tables

    names = tuple(dict.fromkeys(n.strip() for v in values for n in v.split(",") if n.strip()))
    folder = pathlib.Path(out).parent
    if not (folder / results_tables.SPEC_FILE).exists():
        return names
    try:
        specs = results_tables.load_specs(folder)
    except results_tables.ResultsError as e:
        raise ValueError(str(e)) from None
    known = results_tables.tables_naming(specs, pathlib.Path(out).stem)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"--tables={','.join(unknown)}: no such table of {out} in {folder / results_tables.SPEC_FILE}; "
            f"expected some of {', '.join(known) or '(none)'}"
        )
    return names


def record_main(workdir: str) -> int:
    """`effnet-results record WORKDIR`: append the run's record to --out."""
    from effnet_jax import runs
    from effnet_jax.cli.logs import quiet_unless_verbose
    from effnet_jax.reporting import recipe_record, results_tables
    from effnet_jax.runs import code_version

    quiet_unless_verbose()
    missing = [f"--{k}" for k in ("id", "name", "kept", "run_command", "run_config") if not FLAGS[k].value]
    if missing:
        raise app.UsageError(f"effnet-results record needs {', '.join(missing)}")
    # isascii: '²'.isdigit() is True but int('²') is a ValueError (resolve_step names the flag's value instead).
    checkpoint = FLAGS.checkpoint
    checkpoint = int(checkpoint) if checkpoint.isascii() and checkpoint.isdigit() else checkpoint
    try:
        run = runs.open(workdir, checkpoint=checkpoint)
        machine = FLAGS.machine or _last_run_line(run, "machine")
        if not machine:
            raise ValueError(f"{workdir}: the run recorded no machine; say which with --machine")
        # Runs trained before runs recorded their code fall back to this checkout's HEAD.
        commit = FLAGS.commit or _last_run_line(run, "code") or code_version.head_commit(os.getcwd())
        if not commit:
            raise ValueError(
                f"{workdir}: the run recorded no code and this is not a git checkout; say which with --commit"
            )
        provenance = recipe_record.Provenance(
            config=FLAGS.run_config, command=FLAGS.run_command, commit=commit, machine=machine
        )
        record = recipe_record.recipe_record(
            run,
            record_id=FLAGS.id,
            name=FLAGS.name,
            kept=FLAGS.kept,
            tables=_tables(FLAGS.tables, FLAGS.out),
            provenance=provenance,
            split=FLAGS.split,
            negative_class=FLAGS.negative_class,
            tta=FLAGS.tta,
        )
        results_tables.append_new_record(FLAGS.out, record)
    except (FileNotFoundError, ValueError) as e:
        print(f"effnet-results: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(record))
    print(
        f"Appended {record['id']!r} to {FLAGS.out}; render the tables with effnet-results tables --write",
        file=sys.stderr,
    )
    return 0


def main(argv):
    workdirs = argv[1:]
    if workdirs == ["tables"]:
        return tables_main()
    if workdirs[:1] == ["record"]:
        if len(workdirs) != 2:
            raise app.UsageError(
                "effnet-results record takes one run directory: effnet-results record WORKDIR --id=..."
            )
        return record_main(workdirs[1])
    if not workdirs:
        raise app.UsageError("effnet-results needs at least one training run directory.")
    from effnet_jax import runs
    from effnet_jax.metrics.classification import json_safe
    from effnet_jax.reporting import run_summary

    rows = []
    workdir = None
    try:
        for workdir in workdirs:
            run = runs.open(workdir, checkpoint=None)
            rows.append(run_summary.training_row(run))
            if FLAGS.eval:
                rows.extend(run_summary.evaluation_rows(run))
        if FLAGS.format == "json":  # NaN (no threshold past two classes) as null: valid JSON
            text = json.dumps(json_safe([dataclasses.asdict(r) for r in rows]), indent=2, allow_nan=False)
        else:
            text = run_summary.to_markdown(rows)
    except (FileNotFoundError, ValueError) as e:
        print(f"effnet-results: error: {e}", file=sys.stderr)
        return 1
    except (TypeError, AttributeError, KeyError, OverflowError) as e:
        # A downloaded run whose config.json or eval reports hold a value of another type than the
        # trainer writes (a NaN model name, a list for metrics): one line naming the run, not a traceback.
        print(
            f"effnet-results: error: {workdir}: its config.json, metrics.jsonl or eval reports hold a value "
            f"effnet_jax does not write ({type(e).__name__}: {e})",
            file=sys.stderr,
        )
        return 1
    print(text)
    return 0


def run():
    """Console-script entry point."""
    run_command(__doc__, define_flags, main)


if __name__ == "__main__":
    run()
