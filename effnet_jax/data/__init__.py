"""Chest X-ray data: TFDS builders, split rules and the grain input pipeline (its config keys:
``effnet_jax/train/config.py``, section ``data``).

The pipeline (grain, TFDS) is imported on first use, so that the image readers
(``imaging``, ``dicom``, ``transforms``) load with numpy and Pillow alone.
"""

import importlib

__all__ = ["create_split", "make_global_batch", "split_info"]


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module("effnet_jax.data.pipeline"), name)
    raise AttributeError(f"module 'effnet_jax.data' has no attribute {name!r}")
