"""Keep freed host memory in the process, so a CPU train step does not page-fault its scratch in every step.

XLA's CPU runtime allocates one scratch buffer for each execution of a compiled step and
frees it when the step ends: more than a gigabyte for B0's train step.
glibc serves an allocation that large with a fresh ``mmap`` (a thread's own arena cannot
hold it) and gives it back to the kernel on ``free``, so the whole buffer is faulted
in again, page by page, every step (measured: docs/experiments/performance.md, "Host memory").

``keep_freed_host_memory`` sets three glibc allocator options for the process: one arena
(threads share the main heap, which can grow to any size), no ``mmap`` for large blocks,
and no trimming of the heap's top. Freed blocks then stay in the process and the next
step reuses them. The cost is that the process keeps its peak host memory until it exits
(a GPU framework's caching allocator makes the same trade). The command-line tools call it
when ``effnet_jax.cli`` is imported, before any thread allocates; set
``EFFNET_JAX_KEEP_HOST_MEMORY=0`` to leave the allocator as it is. Elsewhere (not Linux,
or a C library other than glibc) it does nothing.

It must run before the threads that will allocate the scratch (XLA's, created when JAX
first uses the CPU) make their first allocation: a thread keeps the arena it was given.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV_VAR = "EFFNET_JAX_KEEP_HOST_MEMORY"

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_kept: bool | None = None


def opted_out(environ=None) -> bool:
    """True when ``EFFNET_JAX_KEEP_HOST_MEMORY`` says not to touch the allocator (0, false, no, off)."""
    value = (os.environ if environ is None else environ).get(ENV_VAR, "1")
    return value.strip().lower() in ("0", "false", "no", "off")


def _glibc():
    """The process's C library when it is glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None  # musl and others: their allocators behave differently and take no such options
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc


def keep_freed_host_memory() -> bool:
    """Tunes glibc's allocator to keep freed memory for reuse (see the module doc); True when it did.

    Idempotent. Does nothing (False) when opted out with ``EFFNET_JAX_KEEP_HOST_MEMORY=0``,
    off Linux, or with a C library other than glibc.
    """
    global _kept
    if _kept is not None:
        return _kept
    libc = None if opted_out() else _glibc()
    if libc is None:
        _kept = False
        return _kept
    # mallopt takes an int; glibc stores the trim threshold as size_t, so -1 means "never trim".
    _kept = all(
        libc.mallopt(param, value) == 1
        for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    )
    return _kept


def host_memory_kept() -> bool:
    """Whether ``keep_freed_host_memory`` tuned the allocator in this process (for logs and benchmarks)."""
    return bool(_kept)
