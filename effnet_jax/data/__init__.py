"""Chest X-ray data: TFDS builders, split rules and the grain input pipeline."""

from effnet_jax.data.config import default_data_config
from effnet_jax.data.pipeline import create_split, make_global_batch, split_info

__all__ = ['default_data_config', 'create_split', 'make_global_batch', 'split_info']
