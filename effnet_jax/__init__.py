"""effnet_jax: EfficientNet in JAX/Flax, from converted ImageNet weights to pneumonia diagnosis."""

from effnet_jax.factory import create_model, init_variables
from effnet_jax.models import EfficientNet, build_model, get_variant, list_variants
from effnet_jax.weights.pypi import offline_weights

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
