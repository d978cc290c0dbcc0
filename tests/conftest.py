"""Shared pytest set-up: keep JAX on the CPU and Keras on the JAX backend."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("KERAS_BACKEND", "jax")
