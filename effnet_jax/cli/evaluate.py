"""effnet-eval: evaluate a training run's checkpoint on a split.

    effnet-eval --workdir=DIR [--split=test] [--checkpoint=best|latest|STEP] [--tta=none|flip|crops|flip+crops]

Writes WORKDIR/eval/<split>_<step>/ (metrics.json, confusion matrices, ROC curve,
predictions.csv) and prints a table at the 0.5 and validation-Youden thresholds.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags():
    """Defines this command's flags (once). Called by ``run``, not at import, so that importing
    several CLI modules in one process (a test session) cannot collide on --workdir."""
    _define(flags.DEFINE_string, "workdir", None, "Training run directory (holds checkpoints/).")
    _define(flags.DEFINE_string, "split", "test", "Split to evaluate: train, validation or test.")
    _define(flags.DEFINE_string, "checkpoint", "best", "'best' (by the run's best_metric), 'latest' or a step number.")
    _define(flags.DEFINE_string, "tta", "none", "Test-time augmentation: none, flip, crops[@FRACTION] or e.g. flip+crops.")
    _define(flags.DEFINE_integer, "batch_size", None, "Evaluation batch size (default: the run's eval_batch_size).")
    _define(flags.DEFINE_bool, "ema", True, "Evaluate the EMA weights when the run kept them.")
    _define(flags.DEFINE_string, "out_dir", None, "Where to write outputs (default: WORKDIR/eval/<split>_<step>).")


def _define(define, name, *args):
    # Another command's module (effnet-train) may already own --workdir in this process: share it.
    if name not in FLAGS:
        define(name, *args)


def main(argv):
    if not FLAGS["verbosity"].present:
        # orbax logs each restore at INFO and read-only opens at WARNING: noise for this command.
        logging.set_verbosity(logging.ERROR)
    if len(argv) > 1:
        raise app.UsageError(f"effnet-eval takes no positional arguments, got {argv[1:]}.")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required: the training run directory to evaluate.")
    import jax

    from effnet_jax import tta as tta_lib
    from effnet_jax.evaluation import evaluate_checkpoint

    try:
        tta = tta_lib.parse_tta(FLAGS.tta)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    device = jax.local_devices()[0]
    print(f"Evaluating {FLAGS.workdir} (checkpoint={FLAGS.checkpoint}, split={FLAGS.split}, tta={tta.spec()}) "
          f"on {device.platform}:{device.id}", flush=True)
    try:
        report = evaluate_checkpoint(FLAGS.workdir, split=FLAGS.split, checkpoint=FLAGS.checkpoint, tta=tta,
                                     batch_size=FLAGS.batch_size, use_ema=FLAGS.ema, out_dir=FLAGS.out_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"effnet-eval: error: {e}", file=sys.stderr)
        return 1
    synthetic = " [synthetic data]" if report["synthetic"] else ""
    print(f"\n{report['split']} split, step {report['step']}, {report['num_examples']} images, "
          f"class counts {report['class_counts']}{synthetic}")
    print(f"threshold chosen by {report['threshold_source']}: {report['validation_threshold']:.4f}\n")
    print(report["table"])
    print(f"\nWrote {report['out_dir']}/ ({', '.join(sorted(report['files'].values()))})")
    return 0


def run():
    """Console-script entry point."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
