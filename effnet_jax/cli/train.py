"""effnet-train: train (or resume) a run described by a config file.

    effnet-train --config=configs/debug.py --workdir=/tmp/effnet_debug [--config.key=value ...]
    effnet-train --config=configs/debug.py --workdir=/tmp/effnet_debug --dry_run   # what it would do

With --config.soup_seeds=N (N > 1) it trains N seeds into WORKDIR/members/seed_<S>/ and
averages their best checkpoints into one model in WORKDIR (docs/ensembles-and-soups.md); with
--config.soup_combine=logits it keeps them all as a seed ensemble whose logits are averaged.

Exit status: 0 done; 2 bad flag or config key, or a non-finite loss; 3 bad input (data
layout, bad image, empty class, stale prepared data, weight file); 4 workdir held by
another trainer or its checkpoint does not fit the config; 5 cannot write (disk full,
read-only, permission); 143 stopped by SIGTERM after saving (rerun to resume). These
print one line; set EFFNET_TRACEBACK=1 to see the traceback.
"""

from __future__ import annotations

import logging as std_logging
import sys

from absl import app, flags

from effnet_jax.cli.command import define_config_flag, run_config_command
from effnet_jax.cli.errors import EXIT_PREEMPTED, exit_in_one_line
from effnet_jax.cli.logs import only_warnings_from_this_process, show_our_logs

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS) -> None:
    """Defines effnet-train's flags on ``fv``."""
    define_config_flag(fv)
    flags.DEFINE_string(
        "workdir",
        None,
        "Run directory: checkpoints, metrics.jsonl, tensorboard/. An existing run there is resumed.",
        flag_values=fv,
    )
    # Multi-process runs (launch/): every process gets the same flags but its own --process_id.
    flags.DEFINE_enum(
        "distributed",
        "auto",
        ["auto", "on", "off"],
        "jax.distributed: 'auto' starts it when a coordinator is given (flag or JAX_COORDINATOR_ADDRESS); "
        "'on' always (a TPU pod slice detects the rest); 'off' never.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0 (or JAX_COORDINATOR_ADDRESS).", flag_values=fv
    )
    flags.DEFINE_integer("num_processes", None, "Number of processes (or JAX_NUM_PROCESSES).", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "This process's index, 0-based (or JAX_PROCESS_ID).", flag_values=fv)
    flags.DEFINE_bool(
        "dry_run",
        False,
        "Print the resolved config, the data found (splits, class counts, external sets) and what the run "
        "would write, then exit: nothing is prepared or written.",
        flag_values=fv,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Import after flag parsing: JAX reads XLA_FLAGS and platform flags when first imported.
    from effnet_jax.compilation_cache import setup_compilation_cache
    from effnet_jax.experiment import run_experiment
    from effnet_jax.train import distributed
    from effnet_jax.train.loop import NonFiniteLossError
    from effnet_jax.train.preemption import Preempted

    show_our_logs()
    from effnet_jax.train.config import validate_config

    try:
        validate_config(FLAGS.config)  # before any data is read or anything compiled
    except ValueError as e:
        exit_in_one_line("effnet-train", e)
    if FLAGS.dry_run:
        import jax

        from effnet_jax.train import plan
        from effnet_jax.train.config import require_batches_fit_devices

        try:
            require_batches_fit_devices(FLAGS.config, jax.device_count(), jax.process_count())
        except ValueError as e:
            exit_in_one_line("effnet-train", e)
        try:
            print(plan.describe(FLAGS.config, FLAGS.workdir))
        except Exception as e:  # one line for known causes; a bug keeps its traceback
            exit_in_one_line("effnet-train --dry_run", e)
        return

    from effnet_jax.runs import code_version

    code_version.describe()  # now: the checkout may move on during a long run; the records name this code
    cache = setup_compilation_cache(FLAGS.config.get("compilation_cache_dir", None))
    std_logging.getLogger("effnet_jax.train").info(
        "compilation cache: %s", cache or "off (config.compilation_cache_dir='')"
    )
    try:
        settings = distributed.resolve(
            FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
        )
        started = distributed.initialize(settings)
    except ValueError as e:
        print(f"effnet-train: bad flag: {e}", file=sys.stderr)
        sys.exit(2)
    if started and not distributed.is_main_process():
        only_warnings_from_this_process()
    try:
        outcome = run_experiment(FLAGS.config, FLAGS.workdir)
    except NonFiniteLossError as e:
        print(f"effnet-train: {e}", file=sys.stderr)
        sys.exit(2)
    except Preempted as e:
        print(f"effnet-train: {e}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except Exception as e:  # one line for known causes; a bug keeps its traceback
        exit_in_one_line("effnet-train", e)
    if outcome.finished and not distributed.is_main_process():
        return
    for warning in outcome.warnings:
        print(f"effnet-train: warning: {warning}", file=sys.stderr)
    for line in outcome.summary():
        print(f"effnet-train: {line}", file=sys.stdout if outcome.finished else sys.stderr)


def run():
    """Console-script entry point (``effnet-train``)."""
    run_config_command("effnet-train", __doc__, define_flags, main)


if __name__ == "__main__":
    run()
