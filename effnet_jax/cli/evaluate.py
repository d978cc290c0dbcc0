"""effnet-eval: evaluate a training run's checkpoint on a split.

    effnet-eval --workdir=DIR [--split=SPLIT] [--checkpoint=best|latest|STEP] [--tta=none|flip|crops|flip+crops]
                [--calibrate=validation|external|SPLIT] [--bootstrap=2000]

Without --split it scores the run's held-out split: test where the data has one, else
the validation split the run trained with (and says which). Writes WORKDIR/eval/<split>_<step>/
(metrics.json, confusion matrices, ROC curve, predictions.csv) and prints a table at the
operating threshold (docs/thresholds.md), 0.5,
the training prior and the validation-Youden threshold, with bootstrap 95% intervals.
--calibrate fits a temperature on that split (WORKDIR/calibration.json); a calibration
fitted at the evaluated checkpoint is applied either way. Refreshes WORKDIR/MODEL_CARD.md.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from effnet_jax.cli.command import check_output_dir, define_once, define_run_flags, run_command
from effnet_jax.cli.logs import quiet_unless_verbose, show_our_logs

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS):
    """Defines this command's flags (once). Called by ``run``, not at import, so that importing
    several CLI modules in one process (a test session) cannot collide on --workdir."""
    define_run_flags(fv)
    define_once(
        flags.DEFINE_string,
        "split",
        None,
        "Split to evaluate (default: the run's held-out split, test where the data has one, else validation): train, validation, test, official_val (the data set's own val/ folder), external (config.data.external; external_1, ... for more) or folder:PATH (any folder holding NORMAL/ and PNEUMONIA/).",
        flag_values=fv,
    )
    define_once(
        flags.DEFINE_string,
        "tta",
        "none",
        "Test-time augmentation: none, flip, crops[@FRACTION] or e.g. flip+crops.",
        flag_values=fv,
    )
    define_once(
        flags.DEFINE_integer,
        "batch_size",
        None,
        "Evaluation batch size (default: the run's eval_batch_size).",
        lower_bound=1,
        flag_values=fv,
    )
    define_once(flags.DEFINE_bool, "ema", True, "Evaluate the EMA weights when the run kept them.", flag_values=fv)
    define_once(
        flags.DEFINE_string,
        "out_dir",
        None,
        "Where to write outputs (default: WORKDIR/eval/<split>_<step>).",
        flag_values=fv,
    )
    define_once(
        flags.DEFINE_string,
        "calibrate",
        None,
        "Fit temperature scaling on this split (validation, external, ...) at the evaluated checkpoint and "
        "store it as WORKDIR/calibration.json before evaluating (docs/calibration.md).",
        flag_values=fv,
    )
    define_once(
        flags.DEFINE_integer,
        "bootstrap",
        2000,
        "Bootstrap resamples for the 95% intervals (by patient); 0 = none.",
        flag_values=fv,
    )


def main(argv):
    show_our_logs()  # progress lines off a terminal
    quiet_unless_verbose()
    if len(argv) > 1:
        raise app.UsageError(f"effnet-eval takes no positional arguments, got {argv[1:]}.")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required: the training run directory to evaluate.")
    import jax

    from effnet_jax import runs
    from effnet_jax.cli.card import write_card_or_warn
    from effnet_jax.compilation_cache import setup_compilation_cache
    from effnet_jax.inference import tta as tta_lib
    from effnet_jax.inference.evaluation import evaluate_checkpoint
    from effnet_jax.output_files import inside_problem
    from effnet_jax.runs.layout import Layout

    setup_compilation_cache(runs.compilation_cache_dir(FLAGS.workdir))
    try:
        tta = tta_lib.parse_tta(FLAGS.tta)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    # The default out_dir is WORKDIR/eval/<split>_<step>: its parent is what can be checked now. Inside
    # the run's checkpoints/, a folder made for the report would read as a checkpoint.
    problem = (
        inside_problem(FLAGS.out_dir, Layout(FLAGS.workdir).checkpoints, "--out_dir", "the run's checkpoints")
        or check_output_dir(FLAGS.out_dir, "--out_dir")
        if FLAGS.out_dir
        else None
    )
    if problem is None and not FLAGS.out_dir and os.path.isdir(FLAGS.workdir):
        eval_dir = Layout(FLAGS.workdir).eval
        if os.path.islink(eval_dir):  # a downloaded run's eval -> elsewhere: not even a probe file there
            problem = f"--workdir={FLAGS.workdir}: its eval/ folder is a link; refusing to write through it"
        else:
            problem = check_output_dir(eval_dir, "--workdir (its eval/ folder)")
    if problem:
        print(f"effnet-eval: error: {problem}", file=sys.stderr)
        return 1
    device = jax.local_devices()[0]
    print(
        f"Evaluating {FLAGS.workdir} (checkpoint={FLAGS.checkpoint}, split={FLAGS.split or 'the held-out one'}, "
        f"tta={tta.spec()}) "
        f"on {device.platform}:{device.id}",
        flush=True,
    )
    try:
        report = evaluate_checkpoint(
            runs.open(FLAGS.workdir, FLAGS.checkpoint),
            split=FLAGS.split,
            tta=tta,
            batch_size=FLAGS.batch_size,
            use_ema=FLAGS.ema,
            out_dir=FLAGS.out_dir,
            calibrate=FLAGS.calibrate,
            bootstrap_resamples=FLAGS.bootstrap,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"effnet-eval: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a quota: one line naming what could not be written
        print(
            f"effnet-eval: error: {e.filename or FLAGS.out_dir or FLAGS.workdir}: cannot write ({e.strerror or e})",
            file=sys.stderr,
        )
        return 1
    synthetic = " [synthetic data]" if report.synthetic else ""
    if report.split_default:
        print(f"No --split: scoring {report.split}, {report.split_default}.")
    print(
        f"\n{report.split} split, step {report.step}, {report.num_examples} images, "
        f"class counts {report.class_counts}{synthetic}"
    )
    if len(report.class_names) > 2:
        # More than two classes: no threshold; the table is per class, one vs rest.
        print(f"probabilities: {report.calibration}\n\n{report.table}")
    else:
        _print_binary(report)
    print(f"\nWrote {report.out_dir}/ ({', '.join(sorted(report.files.values()))})")
    card = write_card_or_warn(FLAGS.workdir, "effnet-eval")
    if card:
        print(f"Refreshed {card}")
    return 0


def _print_binary(report) -> None:
    """Thresholds, calibration and the table of a two-class report."""
    print(f"operating threshold {report.operating_threshold:.4f}: {report.operating_threshold_rule}")
    print(f"threshold chosen by {report.threshold_source}: {report.validation_threshold:.4f}")
    print(f"probabilities: {report.calibration}")
    if report.temperature != 1.0:
        print(
            f"  ECE on this split {report.uncalibrated['ece']:.4f} -> {report.metrics['threshold_0.5']['ece']:.4f}; "
            "thresholds above are mapped through the same temperature (the table's), so no label changes"
        )
    ci = report.metrics["operating"].get("ci95")
    if ci:
        print(f"[95% bootstrap intervals: {ci['resamples']} resamples by {ci['resampled_by']}, {ci['groups']} groups]")
    print()
    print(report.table)


def run():
    """Console-script entry point."""
    run_command(__doc__, define_flags, main)


if __name__ == "__main__":
    run()
