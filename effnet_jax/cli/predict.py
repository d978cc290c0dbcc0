"""effnet-predict: score chest X-ray images with a trained run.

    effnet-predict --workdir=DIR [--checkpoint=best|latest|STEP] [--out=preds.csv|preds.jsonl]
        [--gradcam=OUT_DIR] [--threshold=auto|prior|youden|P] IMAGE_FOLDER_OR_GLOB...
    effnet-predict --exported=DIR [--out=...] [--threshold=auto|P] IMAGE_FOLDER_OR_GLOB...
        (a model written by effnet-export, run with jax alone)

Inputs are image files, folders (searched recursively for .jpeg/.jpg/.png/.bmp/.tif/.gif/
.webp files) and glob patterns ('scans/**/*.png'; quote them). Without --out it prints one
JSON line per image: {"file", "prob_pneumonia", "label", "threshold", "temperature"} (plus,
with --gradcam, "gradcam": the overlay PNG at the image's size, and "gradcam_panel": X-ray |
overlay | colour bar with the prediction in its title), or {"file", "error"} for a file it
cannot read; --out writes those rows to a CSV (every field a column, empty where a row has
none) or JSON-lines file instead (by its extension); --exported gives the same fields. The label uses the run's operating
threshold (config.operating_threshold: with external data, the highest threshold that kept
sensitivity >= 0.95 on it; else the training prior), or --threshold=prior,
--threshold=youden (the validation Youden threshold effnet-eval stored for the same
checkpoint), or --threshold=P; with --exported, model.json's operating threshold or
--threshold=P. A run trained on synthetic data is named in a warning. A file found in a
folder or by a pattern that is a link leading outside it is an unreadable image (an error
row) unless --follow_links; files named as arguments are read as named. IMAGE may be a DICOM
file (with the ``dicom`` extra). A temperature fitted at the checkpoint
(WORKDIR/calibration.json, docs/calibration.md) calibrates prob_pneumonia ("temperature" is
then that T, else 1.0); rule-derived thresholds are mapped with it, so labels do not change.

Exit status: 0 every image scored; 1 an image could not be read (the others are scored),
or the run could not be loaded, or an output could not be written; 2 bad usage (no
inputs, a bad flag or --out name); 3 an input path or pattern names no file, or the
folders hold no image (nothing is scored).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

from absl import flags

from effnet_jax.cli.command import (
    check_output_dir,
    define_follow_links_flag,
    define_once,
    define_run_flags,
    run_command,
)
from effnet_jax.cli.logs import quiet_unless_verbose

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS):
    """Defines this command's flags (once). Called by ``run``, not at import, so that importing
    several CLI modules in one process (a test session) cannot collide on --workdir."""
    define_run_flags(fv)
    define_once(
        flags.DEFINE_string,
        "gradcam",
        None,
        "Directory to write a Grad-CAM overlay PNG and a titled panel PNG per image.",
        flag_values=fv,
    )
    define_once(
        flags.DEFINE_string,
        "threshold",
        "auto",
        "Decision threshold in [0, 1], 'auto' (the run's operating threshold, docs/thresholds.md), 'prior' (training prior) or 'youden' (stored by effnet-eval).",
        flag_values=fv,
    )
    define_once(flags.DEFINE_integer, "batch_size", 8, "Images per forward pass.", lower_bound=1, flag_values=fv)
    define_once(
        flags.DEFINE_string,
        "out",
        None,
        "Write the predictions to this .csv or .jsonl file (one row per image) instead of stdout; rows go to "
        "OUT.tmp, renamed over OUT once written, so an earlier OUT stays whole until then.",
        flag_values=fv,
    )
    define_once(
        flags.DEFINE_string,
        "exported",
        None,
        "Directory written by effnet-export: predict with it (jax alone) instead of a run.",
        flag_values=fv,
    )
    define_follow_links_flag(fv)


EXIT_FAILED = 1  # an image could not be read, the run could not be loaded, or an output not written
EXIT_USAGE = 2
EXIT_NO_INPUT = 3  # an input path or pattern names no file, or the folders hold no image


def main(argv):
    quiet_unless_verbose()
    from effnet_jax.inference.inputs import InputNotFoundError, expand_inputs
    from effnet_jax.inference.prediction_output import output_format
    from effnet_jax.output_files import file_ids, input_problem, inside_problem, output_file_problem
    from effnet_jax.runs.layout import Layout

    if not FLAGS.workdir and not FLAGS.exported:
        return _fail("--workdir (the training run) or --exported (an effnet-export folder) is required", EXIT_USAGE)
    if len(argv) < 2:
        return _fail("give at least one image, folder or glob pattern after the flags", EXIT_USAGE)
    try:
        if FLAGS.out:
            output_format(FLAGS.out)
    except ValueError as e:
        return _fail(str(e), EXIT_USAGE)
    # A link planted at the name or at the name it is written under first: refused before the model is loaded.
    problem = FLAGS.out and (
        output_file_problem(FLAGS.out, "--out") or output_file_problem(f"{FLAGS.out}.tmp", "--out")
    )
    if problem:
        return _fail(problem, EXIT_FAILED)
    for flag, path in (("--gradcam", FLAGS.gradcam), ("--out", FLAGS.out and (os.path.dirname(FLAGS.out) or "."))):
        if not path:
            continue
        # Inside the run's checkpoints/, a folder made for an output reads as a checkpoint.
        checkpoints = Layout(FLAGS.workdir).checkpoints if FLAGS.workdir else None
        problem = checkpoints and inside_problem(path, checkpoints, flag, "the run's checkpoints")
        problem = problem or check_output_dir(path, flag)
        if problem:
            return _fail(problem, EXIT_FAILED)
    try:
        paths = expand_inputs(argv[1:], follow_links=FLAGS.follow_links)
    except InputNotFoundError as e:
        return _fail(str(e), EXIT_NO_INPUT)
    if not paths:
        return _fail(f"no image files in {' '.join(argv[1:])}", EXIT_NO_INPUT)
    inputs = file_ids(paths)
    problem = FLAGS.out and (input_problem(FLAGS.out, inputs) or input_problem(f"{FLAGS.out}.tmp", inputs))
    if problem:  # --out naming an input would be emptied before that input is read
        return _fail(f"--out={problem}", EXIT_FAILED)
    if FLAGS.exported:
        return _main_exported(paths)
    from effnet_jax import runs
    from effnet_jax.compilation_cache import setup_compilation_cache
    from effnet_jax.inference.prediction import Predictor

    setup_compilation_cache(runs.compilation_cache_dir(FLAGS.workdir))

    try:
        predictor = Predictor(runs.open(FLAGS.workdir, FLAGS.checkpoint), FLAGS.threshold, FLAGS.batch_size)
    except (FileNotFoundError, ValueError) as e:
        return _fail(str(e), EXIT_FAILED)
    if predictor.synthetic:
        print(
            f"effnet-predict: warning: {FLAGS.workdir} was trained on synthetic data (a debug run); "
            "its predictions mean nothing",
            file=sys.stderr,
        )
    shown = "none" if predictor.threshold is None else f"{predictor.threshold:.4f}"
    print(
        f"effnet-predict: {len(paths)} image(s), step {predictor.step}, threshold {shown} "
        f"({predictor.threshold_source}), probabilities {predictor.calibration}",
        file=sys.stderr,
    )
    return _emit(predictor.predict(paths, FLAGS.gradcam), predictor.class_names, FLAGS.gradcam)


def _main_exported(paths) -> int:
    """--exported=DIR: the exported model, with its operating threshold unless --threshold=P."""
    from effnet_jax import serving

    threshold = None
    if FLAGS.threshold not in ("auto", "", None):
        try:
            threshold = float(FLAGS.threshold)
        except ValueError:
            threshold = -1.0
        if not 0.0 <= threshold <= 1.0:
            return _fail(f"--threshold={FLAGS.threshold!r}: with --exported, 'auto' or P in [0, 1]", EXIT_USAGE)
    if FLAGS.gradcam:
        return _fail("--gradcam needs the run (--workdir), not --exported", EXIT_USAGE)
    try:
        model = serving.load(FLAGS.exported)
    except serving.ExportedModelError as e:
        return _fail(str(e), EXIT_FAILED)
    shown = model.threshold if threshold is None else threshold
    print(
        f"effnet-predict: {len(paths)} image(s), exported model {FLAGS.exported}, "
        f"threshold {'none (the most probable class)' if shown is None else f'{shown:.4f}'}",
        file=sys.stderr,
    )
    try:
        return _emit(model.predict_files(paths, threshold, FLAGS.batch_size), model.class_names)
    except serving.ExportedModelError as e:  # a hand-made function that returned no probabilities
        return _fail(str(e), EXIT_FAILED)


def _emit(records, class_names=None, gradcam_dir=None) -> int:
    """Prints or writes (--out) each record; EXIT_FAILED if any image could not be read or an output not written."""
    from effnet_jax.inference.prediction_output import PredictionWriter, printable_record
    from effnet_jax.output_files import UnsafeOutputError, printable_line

    failed = counted = 0
    try:
        writer = PredictionWriter(FLAGS.out, class_names) if FLAGS.out else None
    except (UnsafeOutputError, OSError) as e:
        return _fail(f"--out={FLAGS.out}: {e}" if isinstance(e, OSError) else str(e), EXIT_FAILED)
    try:
        with contextlib.ExitStack() as stack:
            if writer:
                stack.callback(writer.close)  # the rows so far replace --out, also when a later output fails
            for record in records:
                if "error" in record:
                    failed += 1
                    # One line on the terminal: a newline or escape code in a file name is shown escaped.
                    print(f"effnet-predict: cannot read {printable_line(record['error'])}", file=sys.stderr)
                if writer:
                    writer.write(record)
                else:
                    print(json.dumps(printable_record(record)), flush=True)
                counted += 1
    except UnsafeOutputError as e:  # a Grad-CAM name taken by a link: nothing is written through it
        return _fail(f"{e} ({counted} image(s) done before it)", EXIT_FAILED)
    except OSError as e:  # a full disk or a quota: one line, as for any output not written
        where = e.filename or FLAGS.out or gradcam_dir
        return _fail(f"{where}: cannot write ({e.strerror or e}) ({counted} image(s) done before it)", EXIT_FAILED)
    if writer:
        print(f"effnet-predict: wrote {counted} row(s) ({failed} unreadable) to {FLAGS.out}")
    if gradcam_dir:
        print(f"effnet-predict: wrote Grad-CAM overlays and panels to {gradcam_dir}", file=sys.stderr)
    return EXIT_FAILED if failed else 0


def _fail(message: str, status: int) -> int:
    print(f"effnet-predict: error: {message}", file=sys.stderr)
    return status


def run():
    """Console-script entry point."""
    run_command(__doc__, define_flags, main)


if __name__ == "__main__":
    run()
