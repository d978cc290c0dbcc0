"""effnet-sweep: train every point of a grid of config overrides with effnet-train's trainer, and tabulate them.

    effnet-sweep --config=configs/debug.py --workdir=/tmp/sweep \\
        --sweep='optimizer.learning_rate=[1e-3,5e-4]' --sweep='seed=[0,1]' [--config.KEY=VALUE ...]

Each --sweep is a config key and a list of Python literals (strings quoted); the grid is
their cartesian product. Every point trains as effnet-train would into
WORKDIR/points/<slug>/ and is evaluated at its best checkpoint on validation and each
external split (effnet-eval's reports in its eval/). WORKDIR/sweep.csv gets one row per
point (its overrides, best step, metrics at the operating threshold) and WORKDIR/sweep.md
the same table. Run the same command again to resume: finished points are skipped.

Exit status as effnet-train's: 2 a bad flag, --sweep or config key; 4 WORKDIR held by
another sweep (or a point by another trainer); 143 stopped by SIGTERM after saving.
"""

from __future__ import annotations

import sys

from absl import app, flags

from effnet_jax.cli.command import define_config_flag, run_config_command
from effnet_jax.cli.errors import EXIT_PREEMPTED, EXIT_USAGE, EXIT_WORKDIR, exit_in_one_line
from effnet_jax.cli.logs import show_our_logs

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS) -> None:
    """Defines effnet-sweep's flags on ``fv``."""
    define_config_flag(fv)
    flags.DEFINE_string(
        "workdir",
        None,
        "Sweep directory: points/<slug>/ (one run each), sweep.csv, sweep.md. A sweep there is resumed.",
        flag_values=fv,
    )
    flags.DEFINE_multi_string(
        "sweep",
        [],
        "KEY=[VALUE, ...]: a config key and the values it takes (Python literals); repeat for more axes.",
        flag_values=fv,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Import after flag parsing: JAX reads XLA_FLAGS and platform flags when first imported.
    from effnet_jax import sweep
    from effnet_jax.compilation_cache import setup_compilation_cache
    from effnet_jax.train.preemption import Preempted

    show_our_logs()
    try:
        axes = [sweep.parse_axis(spec) for spec in FLAGS.sweep]
        sweep.plan(FLAGS.config, FLAGS.workdir, axes)  # every point checked before anything trains
    except ValueError as e:
        print(f"effnet-sweep: bad flag: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    setup_compilation_cache(FLAGS.config.get("compilation_cache_dir", None))
    try:
        result = sweep.run_sweep(FLAGS.config, FLAGS.workdir, axes)
    except Preempted as e:
        print(f"effnet-sweep: {e}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except sweep.SweepFolderError as e:  # a planted link or a stored report a row cannot use: one line
        print(f"effnet-sweep: {e}", file=sys.stderr)
        sys.exit(EXIT_WORKDIR)
    except Exception as e:  # one line for known causes; a bug keeps its traceback
        exit_in_one_line("effnet-sweep", e)
    with open(result.markdown) as f:
        print(f.read().rstrip())
    print(
        f"effnet-sweep: {len(result.rows)} points ({len(result.trained)} trained now) in {result.workdir}: "
        f"{sweep.CSV}, {sweep.MARKDOWN}, {sweep.POINTS}/"
    )


def run():
    """Console-script entry point (``effnet-sweep``)."""
    run_config_command("effnet-sweep", __doc__, define_flags, main)


if __name__ == "__main__":
    run()
