"""effnet-adapt: a run's BatchNorm statistics re-estimated on a deployment site's unlabeled images, as a new run.

    effnet-adapt --workdir=RUN --images=DIR --out=NEWRUN [--checkpoint=best|latest|STEP]
                 [--max_images=2000] [--batch_size=32] [--mix=1.0] [--follow_links]

Reads every image under DIR (recursively; folder names are never read as labels) as
effnet-predict reads them, and re-estimates each BatchNorm layer's mean and variance on
them: the exact population statistics, each layer measured with the layers before it
already adapted (AdaBN). --mix blends them with the run's own (1.0 replaces them).
A link under DIR leading outside it is skipped as unreadable unless --follow_links.
A soup's or seed ensemble's members are adapted too. NEWRUN is a run like any other
(effnet-eval, effnet-predict, effnet-export, effnet-results read it) that keeps RUN's
operating threshold and calibration; adapted.json says what it was adapted from and to.
RUN is left as it was. Exit status: 0 done; 1 RUN, DIR or NEWRUN unusable; 5 a failed write (a full disk).
docs/adapting.md.
"""

from __future__ import annotations

import sys

from absl import app, flags

from effnet_jax.cli.command import define_follow_links_flag, define_once, define_run_flags, run_command
from effnet_jax.cli.errors import EXIT_DISK, exit_in_one_line, one_line
from effnet_jax.cli.logs import quiet_unless_verbose, show_our_logs

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS):
    """Defines this command's flags (once); see cli/predict.py for why not at import."""
    define_run_flags(fv)
    define_once(
        flags.DEFINE_string,
        "images",
        None,
        "Folder of the site's unlabeled images, searched recursively (sub-folder names are ignored).",
        flag_values=fv,
    )
    define_once(flags.DEFINE_string, "out", None, "New run directory to write the adapted run into.", flag_values=fv)
    define_once(
        flags.DEFINE_integer,
        "max_images",
        2000,
        "At most this many images (a fixed random choice when the folder holds more); each is held in memory.",
        flag_values=fv,
    )
    define_once(
        flags.DEFINE_integer,
        "batch_size",
        32,
        "Images per forward pass (memory only: the statistics do not depend on it).",
        lower_bound=1,
        flag_values=fv,
    )
    define_once(
        flags.DEFINE_float,
        "mix",
        1.0,
        "Weight of the site's statistics against the run's own: 1.0 replaces them, 0.0 keeps them.",
        flag_values=fv,
    )
    define_follow_links_flag(fv)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not (FLAGS.workdir and FLAGS.images and FLAGS.out):
        raise app.UsageError("--workdir (the run), --images (a folder) and --out (a new folder) are required.")
    from effnet_jax import runs
    from effnet_jax.cli.card import write_card_or_warn
    from effnet_jax.compilation_cache import setup_compilation_cache
    from effnet_jax.inference.adaptation import AdaptError, adapt_run
    from effnet_jax.runs.layout import Layout

    show_our_logs()
    quiet_unless_verbose()
    setup_compilation_cache(runs.compilation_cache_dir(FLAGS.workdir))
    try:
        record = adapt_run(
            FLAGS.workdir,
            FLAGS.images,
            FLAGS.out,
            checkpoint=FLAGS.checkpoint,
            max_images=FLAGS.max_images,
            batch_size=FLAGS.batch_size,
            mix=FLAGS.mix,
            follow_links=FLAGS.follow_links,
        )
    except (FileNotFoundError, AdaptError, ValueError) as e:
        if (one_line(e) or (None,))[0] == EXIT_DISK:  # tensorstore reports a full disk as a ValueError
            exit_in_one_line("effnet-adapt", e)
        print(f"effnet-adapt: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a full disk or a refused write: one line; a bug keeps its traceback
        exit_in_one_line("effnet-adapt", e)
    members = len(record.get("members_adapted", []))
    print(
        f"effnet-adapt: {record['images_used']} images of {record['images']} ({record['images_skipped']} skipped), "
        f"mix {record['mix']:g}; {FLAGS.workdir} step {record['step']}"
        f"{f' and its {members} members' if members else ''} -> {FLAGS.out}; wrote {Layout(FLAGS.out).adapted} "
        f"and its checkpoint in {record['seconds']:.0f} s"
    )
    write_card_or_warn(FLAGS.out, "effnet-adapt")
    return 0


def run():
    """Console-script entry point."""
    run_command(__doc__, define_flags, main)


if __name__ == "__main__":
    run()
