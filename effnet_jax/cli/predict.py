"""effnet-predict: score X-ray image files with a trained run.

    effnet-predict --workdir=DIR [--checkpoint=best|latest|STEP] [--gradcam=OUT_DIR] IMAGE...

Prints one JSON line per image: {"file", "prob_pneumonia", "label", "threshold", "temperature"}
(plus "gradcam": the overlay PNG), or {"file", "error"} for a file it cannot read.
The label uses the run's operating threshold (config.operating_threshold: with external
data, the highest threshold that kept sensitivity >= 0.95 on it; else the training prior),
or --threshold=prior, --threshold=youden (the validation Youden threshold effnet-eval
stored for the same checkpoint), or --threshold=P. A temperature fitted at the checkpoint
(WORKDIR/calibration.json, README Calibration) calibrates prob_pneumonia; rule-derived
thresholds are mapped with it, so labels do not change. Exit status 1 if any image failed.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from effnet_jax.cli.common import (
    check_output_dir,
    define_once,
    quiet_unless_verbose,
    run_compilation_cache_dir,
    setup_compilation_cache,
)

FLAGS = flags.FLAGS


def define_flags():
    """Defines this command's flags (once). Called by ``run``, not at import, so that importing
    several CLI modules in one process (a test session) cannot collide on --workdir."""
    define_once(flags.DEFINE_string, "workdir", None, "Training run directory (holds checkpoints/).")
    define_once(
        flags.DEFINE_string, "checkpoint", "best", "'best' (by the run's best_metric), 'latest' or a step number."
    )
    define_once(flags.DEFINE_string, "gradcam", None, "Directory to write a Grad-CAM overlay PNG per image.")
    define_once(
        flags.DEFINE_string,
        "threshold",
        "auto",
        "Decision threshold in [0, 1], 'auto' (the run's operating threshold, README Thresholds), 'prior' (training prior) or 'youden' (stored by effnet-eval).",
    )
    define_once(flags.DEFINE_integer, "batch_size", 8, "Images per forward pass.")


def main(argv):
    quiet_unless_verbose()
    paths = argv[1:]
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required: the training run directory to predict with.")
    if not paths:
        raise app.UsageError("give at least one IMAGE path after the flags.")
    problem = check_output_dir(FLAGS.gradcam, "--gradcam") if FLAGS.gradcam else None
    if problem:
        print(f"effnet-predict: error: {problem}", file=sys.stderr)
        return 1
    setup_compilation_cache(run_compilation_cache_dir(FLAGS.workdir))
    from effnet_jax.inference.prediction import Predictor

    try:
        predictor = Predictor(FLAGS.workdir, FLAGS.checkpoint, FLAGS.threshold, FLAGS.batch_size)
    except (FileNotFoundError, ValueError) as e:
        print(f"effnet-predict: error: {e}", file=sys.stderr)
        return 1
    print(
        f"effnet-predict: step {predictor.step}, threshold {predictor.threshold:.4f} ({predictor.threshold_source}), "
        f"probabilities {predictor.calibration}",
        file=sys.stderr,
    )
    failed = 0
    for record in predictor.predict(paths, FLAGS.gradcam):
        if "error" in record:
            failed += 1
            print(f"effnet-predict: cannot read {record['error']}", file=sys.stderr)
        print(json.dumps(record), flush=True)
    if FLAGS.gradcam:
        print(f"effnet-predict: wrote Grad-CAM overlays to {FLAGS.gradcam}", file=sys.stderr)
    return 1 if failed else 0


def run():
    """Console-script entry point."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
