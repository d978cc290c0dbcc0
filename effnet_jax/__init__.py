"""effnet_jax: EfficientNet in JAX/Flax, from converted ImageNet weights to pneumonia diagnosis.

The public API is imported on first use, so that ``effnet_jax.serving`` (an exported
model run with jax alone) loads without Flax or the model code.
"""

import importlib

__version__ = "0.1.0"

__all__ = [
    "EfficientNet",
    "build_model",
    "create_model",
    "get_variant",
    "init_variables",
    "list_variants",
    "offline_weights",
]

_HOMES = {
    "create_model": "effnet_jax.factory",
    "init_variables": "effnet_jax.factory",
    "EfficientNet": "effnet_jax.models",
    "build_model": "effnet_jax.models",
    "get_variant": "effnet_jax.models",
    "list_variants": "effnet_jax.factory",
    "offline_weights": "effnet_jax.weights.pypi",
}


def __getattr__(name):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'effnet_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_HOMES))
