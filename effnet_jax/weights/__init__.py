"""Weight readers (safetensors, PyTorch, Keras h5), name maps per source, and loading."""

from effnet_jax.weights.loading import (
    ConvertedWeights,
    LoadReport,
    convert_file,
    merge_weights,
    read_converted,
    resolve_source,
    save_converted,
)
from effnet_jax.weights.readers import SUPPORTED_FORMATS, WeightFileError, read_weights

__all__ = [
    "ConvertedWeights",
    "LoadReport",
    "SUPPORTED_FORMATS",
    "WeightFileError",
    "convert_file",
    "merge_weights",
    "read_converted",
    "read_weights",
    "resolve_source",
    "save_converted",
]
