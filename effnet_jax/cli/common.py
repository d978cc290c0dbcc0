"""Helpers shared by the absl command-line tools."""

from absl import flags, logging

FLAGS = flags.FLAGS


def define_once(define, name, *args):
    """Defines a flag unless another command's module in this process already owns it (--workdir)."""
    if name not in FLAGS:
        define(name, *args)


def quiet_unless_verbose():
    """Drops to ERROR logging unless --verbosity was given: orbax logs every restore at INFO."""
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)


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
    import os

    import jax

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


def run_compilation_cache_dir(workdir: str) -> str:
    """``compilation_cache_dir`` of a training run (its config.json), or the default for older runs."""
    import json
    import os

    try:
        with open(os.path.join(workdir, "config.json")) as f:
            value = json.load(f).get("compilation_cache_dir", DEFAULT_COMPILATION_CACHE_DIR)
    except (OSError, ValueError):
        value = DEFAULT_COMPILATION_CACHE_DIR
    return value if isinstance(value, str) else DEFAULT_COMPILATION_CACHE_DIR
