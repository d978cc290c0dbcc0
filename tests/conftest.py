"""Shared pytest set-up: JAX on the CPU with 8 devices, Keras on the JAX backend, one compilation cache."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("KERAS_BACKEND", "jax")
# The sharding tests need 8 devices: a bare `pytest` gets them (as big_vision's tests set up
# theirs with chex.set_n_cpu_devices) instead of skipping those tests. Set before JAX is
# imported, which reads XLA_FLAGS once; subprocesses inherit it, as under .ci/run.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

_exclusive_fd = None  # held from the first of consecutive exclusive tests to the last


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under pytest-xdist, an ``exclusive`` test runs while no other worker runs a test.

    The multi-process tests start two jax.distributed processes whose gloo peers must connect
    within 30 s; a second worker training beside them on two cores can starve that. Every test
    holds a shared lock on one file for its setup, call and teardown; an exclusive test holds it
    alone, so it waits for the other workers' current tests and they wait for it. Consecutive
    exclusive tests (a module's) keep it between them instead of queueing once per test.
    """
    global _exclusive_fd
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:
        yield
        return
    import fcntl
    import tempfile

    exclusive = item.get_closest_marker("exclusive") is not None
    path = os.path.join(tempfile.gettempdir(), f"effnet_jax_tests_{run}.lock")
    if exclusive and _exclusive_fd is None:
        _exclusive_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(_exclusive_fd, fcntl.LOCK_EX)
    fd = None
    if not exclusive:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)
        if _exclusive_fd is not None and (nextitem is None or nextitem.get_closest_marker("exclusive") is None):
            os.close(_exclusive_fd)
            _exclusive_fd = None


def pytest_sessionstart(session):
    assert jax.device_count() >= 8, f"tests need 8 devices; XLA_FLAGS={os.environ.get('XLA_FLAGS')!r} gave fewer"


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


@pytest.fixture(autouse=True)
def _our_logger_propagates():
    """Each test starts with the effnet_jax logger as a library leaves it: propagating to the root.

    A CLI run in-process (cli/logs.show_our_logs) gives the logger a console handler and stops
    propagation, so the command prints once; left so, every later test's caplog would see none
    of our records, and which tests failed would depend on the order they ran in.
    """
    import logging

    ours = logging.getLogger("effnet_jax")
    for handler in [h for h in ours.handlers if getattr(h, "effnet_jax_console", False)]:
        ours.removeHandler(handler)
    ours.propagate = True
    ours.setLevel(logging.NOTSET)
    yield


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model exported for effnet-serve and effnet-predict (tests/export_fixtures.py), once per test module."""
    from export_fixtures import export_tiny

    return export_tiny(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def model(exported):
    """``exported`` loaded as effnet-serve loads it."""
    from effnet_jax import serving

    return serving.load(exported)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny run with one checkpoint at step 3 (tests/export_fixtures.py, nothing trained), once per test module."""
    from export_fixtures import make_workdir

    return make_workdir(tmp_path_factory.mktemp("run"))


@pytest.fixture
def small_budget(monkeypatch):
    """A decoded-size budget of 16 MiB, so that files of a few hundred KB can exceed it."""
    from effnet_jax import limits

    monkeypatch.setenv(limits.ENV_VAR, "16M")
    return 16 << 20


# Tiny training runs trained once per session and shared by the files that read them.
from run_fixtures import base_run, resumed_run, run_copy, straight_run  # noqa: E402, F401
