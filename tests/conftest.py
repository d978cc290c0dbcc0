"""Shared pytest set-up: JAX on the CPU, Keras on the JAX backend, one compilation cache."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("KERAS_BACKEND", "jax")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_compilation_cache_for_the_session(tmp_path_factory):
    """The whole session compiles into one persistent compilation cache.

    Many tests build equal programs from fresh closures (a variant's initialisation, the
    tiny training runs' steps): jit's in-memory cache misses those, the persistent cache
    (keyed by the program) does not. Tests that need their own cache nest theirs inside.
    """
    from helpers import session_compilation_cache

    with session_compilation_cache(tmp_path_factory):
        yield
