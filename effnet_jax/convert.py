"""effnet-convert: converts a weight file (timm, efficientnet_pytorch, Keras) into an orbax checkpoint.

    effnet-convert --variant tf_efficientnet_lite0 --input efficientnet-lite0.pth --output weights/lite0
    python -m effnet_jax.convert --variant efficientnet_b0 --input timm/efficientnet_b0.ra_in1k --output DIR

The output directory loads with ``effnet_jax.create_model(variant, pretrained=DIR)``.
"""

from __future__ import annotations

import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("variant", None, "Variant name, e.g. efficientnet_b0, tf_efficientnet_b3, tf_efficientnet_lite0.")
flags.DEFINE_string("input", None, "Weight file (.safetensors, .pth/.bin, Keras .h5) or hub name (timm/...).")
flags.DEFINE_string("output", None, "Directory to write the converted checkpoint to.")
flags.DEFINE_integer("num_classes", None, "Classes of the saved head; default: the file's own head.")


def convert(variant_name: str, source: str, output: str, num_classes: int | None = None) -> dict:
    """Converts ``source`` for ``variant_name`` into ``output``; returns the summary printed by the CLI."""
    from effnet_jax.factory import init_variables
    from effnet_jax.models import build_model, get_variant
    from effnet_jax.weights import merge_weights, resolve_source, save_converted

    variant = get_variant(variant_name)
    weights = resolve_source(source, variant)
    if num_classes is None:
        head = weights.tensors.get(("params", "classifier", "bias"))
        num_classes = int(head.shape[0]) if head is not None else 1000
    model = build_model(variant.name, num_classes=num_classes)
    variables, report = merge_weights(init_variables(model), weights)
    mean = weights.mean or variant.mean
    std = weights.std or variant.std
    save_converted(output, variant, num_classes, variables, report, mean, std)
    num_params = sum(x.size for x in __import__("jax").tree_util.tree_leaves(variables["params"]))
    return {
        "variant": variant.name, "source": source, "source_format": report.source_format,
        "num_params": int(num_params), "num_classes": num_classes, "arrays_loaded": len(report.loaded),
        "reinitialised": report.reinitialised, "input_mean": list(mean), "input_std": list(std), "output": output,
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from absl import logging

    from effnet_jax.weights import WeightFileError

    logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO

    try:
        summary = convert(FLAGS.variant, FLAGS.input, FLAGS.output, FLAGS.num_classes)
    except (WeightFileError, FileExistsError, ValueError) as e:
        print(f"effnet-convert: error: {e}", file=sys.stderr)
        return 1
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if isinstance(value, list) and key == "reinitialised":
            value = ", ".join(value) or "none"
        print(f"{key:<{width}}  {value}")
    print(f"Wrote {summary['output']}; load it with create_model({summary['variant']!r}, pretrained=...)")
    return 0


def run():
    """Console-script entry point."""
    flags.mark_flags_as_required(["variant", "input", "output"])
    app.run(main)


if __name__ == "__main__":
    run()
