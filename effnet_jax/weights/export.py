"""Converts a weight file into an orbax checkpoint directory that ``create_model`` loads."""

from __future__ import annotations

from effnet_jax.models import build_model, get_variant
from effnet_jax.models.efficientnet import init_some_variables, variable_shapes
from effnet_jax.weights.loading import merge_weights, resolve_source, save_converted


def convert_to_checkpoint(variant_name: str, source: str, output: str, num_classes: int | None = None) -> dict:
    """Converts ``source`` for ``variant_name`` into ``output``; returns the summary printed by the CLI."""
    variant = get_variant(variant_name)
    weights = resolve_source(source, variant)
    if num_classes is None:
        head = weights.tensors.get(("params", "classifier", "bias"))
        num_classes = int(head.shape[0]) if head is not None else 1000
    model = build_model(variant.name, num_classes=num_classes)
    variables, report = merge_weights(variable_shapes(model), weights, lambda keys: init_some_variables(model, keys))
    mean = weights.mean or variant.mean
    std = weights.std or variant.std
    metadata = save_converted(output, variant, num_classes, variables, report, mean, std)
    return {
        "variant": variant.name,
        "source": source,
        "source_format": report.source_format,
        "num_params": metadata["num_params"],
        "num_classes": num_classes,
        "arrays_loaded": len(report.loaded),
        "reinitialised": report.reinitialised,
        "input_mean": list(mean),
        "input_std": list(std),
        "output": output,
    }
