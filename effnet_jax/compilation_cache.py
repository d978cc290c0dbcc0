"""JAX's persistent compilation cache: where compiled steps are kept between runs, and turning it on."""

import os

import jax
from absl import logging

DEFAULT_COMPILATION_CACHE_DIR = "~/.cache/effnet_jax/jax_cache"


def setup_compilation_cache(directory: str | None = DEFAULT_COMPILATION_CACHE_DIR) -> str:
    """Turns on JAX's persistent compilation cache in ``directory``; returns the path ('' = off).

    A second run (or a resume, an eval, a predict) with the same model, shapes, devices and
    jax version then loads the compiled train/eval steps from disk instead of compiling them
    again; CPU executables are cached too. Must run before the process compiles anything:
    JAX decides once, at its first compilation, whether the cache is used. Only
    computations that took at least a second to compile are written, so the cache holds the
    steps, not every small helper. The cache is trusted code: keep it in a directory only
    you can write to. ``None`` means the default, ``''`` turns it off.
    """
    if directory is None:
        directory = DEFAULT_COMPILATION_CACHE_DIR
    if not directory:
        return ""
    path = os.path.abspath(os.path.expanduser(directory))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        logging.warning("compilation cache %s unusable (%s); compiling from scratch", path, e)
        return ""
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return path
