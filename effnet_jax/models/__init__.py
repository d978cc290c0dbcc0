"""The EfficientNet family in flax.linen."""

from effnet_jax.models.efficientnet import EfficientNet, build_model, init_variables
from effnet_jax.models.variants import VARIANTS, VariantConfig, get_variant, list_variants

__all__ = ["EfficientNet", "VARIANTS", "VariantConfig", "build_model", "get_variant", "init_variables", "list_variants"]
