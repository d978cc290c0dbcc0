"""effnet-export: a trained run as one jax.export function plus model.json, served with jax alone.

    effnet-export --workdir=RUN [--checkpoint=best|latest|STEP] --out=DIR [--platforms=cpu,cuda,tpu]

Writes DIR/model.stablehlo (the function: preprocessing after the resize, the network and
the softmax, with a symbolic batch), DIR/gradcam.stablehlo (the guided Grad-CAM map per image),
DIR/weights.npz, DIR/SHA256SUMS and DIR/model.json (class names, input
size, operating threshold and its rule, variant, weights source, training data, metrics,
versions). Load it with ``effnet_jax.serving.load(DIR)``, ``effnet-predict --exported=DIR`` or
``effnet-serve --exported=DIR``.
"""

from __future__ import annotations

import sys

from absl import app, flags

from effnet_jax.cli.command import check_output_dir, define_once, define_run_flags, run_command
from effnet_jax.cli.logs import quiet_unless_verbose, show_our_logs

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS):
    """Defines this command's flags (once); see cli/predict.py for why not at import."""
    define_run_flags(fv)
    define_once(
        flags.DEFINE_string,
        "out",
        None,
        "Directory to write model.json, model.stablehlo, gradcam.stablehlo, weights.npz and SHA256SUMS.",
        flag_values=fv,
    )
    define_once(
        flags.DEFINE_string,
        "threshold",
        "auto",
        "Operating threshold recorded in model.json: 'auto' (the run's, docs/thresholds.md), 'prior', 'youden' or P.",
        flag_values=fv,
    )
    define_once(
        flags.DEFINE_list,
        "platforms",
        ["cpu", "cuda", "tpu"],
        "Platforms the function is lowered for (jax names).",
        flag_values=fv,
    )


def main(argv):
    show_our_logs()  # progress lines off a terminal
    quiet_unless_verbose()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.workdir or not FLAGS.out:
        raise app.UsageError("--workdir (the training run) and --out (a new folder) are required.")
    problem = _inside_the_checkpoints(FLAGS.out, "--out") or check_output_dir(FLAGS.out, "--out")
    if problem:
        print(f"effnet-export: error: {problem}", file=sys.stderr)
        return 1
    from effnet_jax import runs
    from effnet_jax.cli.card import write_card_or_warn
    from effnet_jax.inference.export import export_run

    try:
        meta = export_run(runs.open(FLAGS.workdir, FLAGS.checkpoint), FLAGS.out, FLAGS.threshold, FLAGS.platforms)
    except (FileNotFoundError, ValueError) as e:
        print(f"effnet-export: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a quota: the earlier export in --out is left whole
        print(f"effnet-export: error: {e.filename or FLAGS.out}: cannot write ({e.strerror or e})", file=sys.stderr)
        return 1
    print(
        f"effnet-export: step {meta['model']['checkpoint_step']} of {FLAGS.workdir}, {meta['input']['image_size']} px, "
        f"threshold {meta['threshold']['value']:.4f} ({meta['threshold']['rule']}), "
        f"platforms {','.join(meta['platforms'])}; wrote {FLAGS.out}/model.json"
    )
    write_card_or_warn(FLAGS.workdir, "effnet-export")  # the card records the export
    return 0


def _inside_the_checkpoints(path: str, flag: str) -> str | None:
    """Why ``path`` may not be written: inside the run's checkpoints/, where a new folder reads as a checkpoint."""
    from effnet_jax.output_files import inside_problem
    from effnet_jax.runs.layout import Layout

    return inside_problem(path, Layout(FLAGS.workdir).checkpoints, flag, "the run's checkpoints")


def run():
    """Console-script entry point."""
    run_command(__doc__, define_flags, main)


if __name__ == "__main__":
    run()
