"""Chest X-ray data: TFDS builders, split rules and the grain input pipeline (its config keys:
``effnet_jax/train/config.py``, section ``data``)."""

from effnet_jax.data.pipeline import create_split, make_global_batch, split_info

__all__ = ["create_split", "make_global_batch", "split_info"]
