"""effnet-soup: average finished runs' weights into one model, a run directory like any other (a model soup).

    effnet-soup --workdir=OUT --members=RUN_A,RUN_B[,...] [--checkpoint=best|latest|STEP] [--combine=logits]

--combine=logits keeps every member and averages their logits at inference instead (a seed
ensemble: one forward pass per member; docs/experiments/README.md).

Each member contributes its own --checkpoint (by default its own best). The members must
be one model on one data set (other seeds): same variant, classes, image size,
normalisation and data set, and the same parameter tree. OUT gets a checkpoint,
config.json, run.json, metrics.jsonl (validation and external splits, evaluated as the
trainer does), soup.json and MODEL_CARD.md; effnet-eval, effnet-predict, effnet-export and
effnet-results read it as any run. Exit status: 0 done; 1 a member or OUT is unusable.
"""

from __future__ import annotations

import sys

from absl import app, flags

from effnet_jax.cli.command import define_once, define_run_flags, run_command
from effnet_jax.cli.logs import quiet_unless_verbose, show_our_logs

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS):
    """Defines this command's flags (once); see cli/predict.py for why not at import."""
    define_run_flags(fv)
    fv["workdir"].help = "New run directory to write the soup into (a model soup is a run like any other)."
    fv["checkpoint"].help = "Each member's checkpoint to average: 'best' (by its own best_metric), 'latest' or a step."
    define_once(
        flags.DEFINE_list,
        "members",
        None,
        "Comma-separated run directories to average (two or more, written by effnet-train).",
        flag_values=fv,
    )
    define_once(
        flags.DEFINE_enum,
        "combine",
        "weights",
        ["weights", "logits"],
        "'weights': average the members' weights (a model soup, one network); 'logits': keep every member and "
        "average their logits (a seed ensemble).",
        flag_values=fv,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.workdir or not FLAGS.members:
        raise app.UsageError("--workdir (a new folder) and --members (two or more runs) are required.")
    from effnet_jax import runs
    from effnet_jax.cli.card import write_card_or_warn
    from effnet_jax.compilation_cache import setup_compilation_cache
    from effnet_jax.runs.layout import Layout
    from effnet_jax.train.soup import IncompatibleMembersError, SoupWorkdirError, make_soup

    show_our_logs()  # what the soup reads, and its evaluation as the trainer logs it
    quiet_unless_verbose()  # orbax's notes on every read-only checkpoint
    setup_compilation_cache(runs.compilation_cache_dir(FLAGS.members[0]))
    try:
        soup = make_soup(FLAGS.members, FLAGS.workdir, FLAGS.checkpoint, FLAGS.combine)
    except (FileNotFoundError, IncompatibleMembersError, SoupWorkdirError, ValueError) as e:
        print(f"effnet-soup: error: {e}", file=sys.stderr)
        return 1
    metric, split = soup["metric"], soup["select_split"]
    members = ", ".join(f"{m['workdir']} step {m['step']}: {_num(m.get(metric))}" for m in soup["members"])
    print(
        f"effnet-soup: {len(soup['members'])} members, {FLAGS.combine} averaged ({members}) -> step {soup['step']}, "
        f"{split} {metric} {_num(soup['soup'].get(metric))}; wrote {Layout(FLAGS.workdir).soup} and its checkpoint"
    )
    write_card_or_warn(FLAGS.workdir, "effnet-soup")
    return 0


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run():
    """Console-script entry point."""
    run_command(__doc__, define_flags, main)


if __name__ == "__main__":
    run()
