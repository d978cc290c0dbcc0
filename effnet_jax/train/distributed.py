"""Multi-process runs: starting ``jax.distributed`` and keeping the processes in agreement.

A run is multi-process when a coordinator is named (flags or environment) or when
``--distributed=on`` asks JAX to detect the cluster itself (Cloud TPU pod slices,
SLURM, ...). Every process then runs the same ``train_and_evaluate``; JAX makes
``jax.devices()`` global, the input pipeline reads one shard per process, and
orbax saves checkpoints collectively.

Where the settings come from, first found wins:

    --coordinator_address  or  JAX_COORDINATOR_ADDRESS   host:port of process 0
    --num_processes        or  JAX_NUM_PROCESSES
    --process_id           or  JAX_PROCESS_ID
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping

import numpy as np

log = logging.getLogger("effnet_jax.train")

MODES = ("auto", "on", "off")
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_CPU_COLLECTIVES = "JAX_CPU_COLLECTIVES_IMPLEMENTATION"


@dataclasses.dataclass(frozen=True)
class Settings:
    """What ``jax.distributed.initialize`` is called with; ``None`` fields are auto-detected."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def resolve(
    mode: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings | None:
    """The settings for this process, or ``None`` for a plain single-process run.

    ``mode``: 'auto' initialises only when a coordinator address is given; 'on'
    always (JAX auto-detects whatever is not given, as on a TPU pod slice); 'off' never.
    """
    env = os.environ if env is None else env
    if mode not in MODES:
        raise ValueError(f"--distributed={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "off":
        return None
    address = coordinator_address or env.get(ENV_COORDINATOR) or None
    n = _int(num_processes, env.get(ENV_NUM_PROCESSES), "--num_processes", ENV_NUM_PROCESSES)
    pid = _int(process_id, env.get(ENV_PROCESS_ID), "--process_id", ENV_PROCESS_ID)
    if mode == "auto" and address is None:
        if n is not None or pid is not None:
            raise ValueError(
                f"--num_processes/--process_id (or {ENV_NUM_PROCESSES}/{ENV_PROCESS_ID}) were "
                f"given without a coordinator: set --coordinator_address or {ENV_COORDINATOR} "
                "(host:port of process 0), or --distributed=on to let JAX detect the cluster"
            )
        return None
    if address is not None:
        # Outside a detected cluster JAX cannot guess these; say which flag is missing.
        if n is None or pid is None:
            raise ValueError(
                f"--coordinator_address={address!r} needs --num_processes and --process_id "
                f"(or {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID})"
            )
        if ":" not in address:
            raise ValueError(f"--coordinator_address={address!r}: expected host:port (or set {ENV_COORDINATOR})")
    if n is not None and n < 1:
        raise ValueError(f"--num_processes={n}: expected >= 1 (or set {ENV_NUM_PROCESSES})")
    if n is not None and pid is not None and not 0 <= pid < n:
        raise ValueError(f"--process_id={pid}: expected 0 <= process_id < num_processes={n} (or set {ENV_PROCESS_ID})")
    return Settings(address, n, pid)


def _int(flag_value, env_value, flag: str, env_name: str) -> int | None:
    if flag_value is not None:
        return int(flag_value)
    if env_value in (None, ""):
        return None
    try:
        return int(env_value)
    except ValueError:
        raise ValueError(f"{env_name}={env_value!r} (for {flag}): expected an integer") from None


def initialize(settings: Settings | None) -> bool:
    """Starts ``jax.distributed`` per ``settings`` (``None``: nothing to do); True when it did.

    Must run before anything touches a JAX backend (``jax.devices()``, the first array).
    """
    if settings is None:
        return False
    import jax

    if jax.distributed.is_initialized():
        return True
    # CPU processes need a cross-process collectives library; gloo ships with jaxlib.
    # Harmless on GPU/TPU (it only concerns the CPU client); an explicit env choice wins.
    if not os.environ.get(ENV_CPU_COLLECTIVES):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=settings.coordinator_address,
            num_processes=settings.num_processes,
            process_id=settings.process_id,
        )
    except ValueError as e:
        # JAX found no cluster to detect (not a TPU pod slice, SLURM, ...): say what to give instead.
        raise ValueError(
            f"jax.distributed could not start ({e}); outside a TPU VM or a detected cluster "
            f"give --coordinator_address, --num_processes and --process_id (or "
            f"{ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID})"
        ) from None
    log.info(
        "jax.distributed: process %d of %d, %d local of %d devices (coordinator %s)",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        settings.coordinator_address or "auto-detected",
    )
    return True


def is_main_process() -> bool:
    """True on the process that writes logs, metric files and the progress bar."""
    import jax

    return jax.process_index() == 0


def broadcast_floats(values) -> list[float]:
    """Process 0's float64 ``values`` on every process, bit for bit (single process: unchanged).

    Travels as uint32 pairs, since JAX without x64 would round float64 to float32 and
    processes that disagree in the last bit can take different branches (and hang).
    """
    import jax
    from jax.experimental import multihost_utils

    arr = np.asarray(values, np.float64)
    if jax.process_count() == 1:
        return arr.tolist()
    bits = np.asarray(multihost_utils.broadcast_one_to_all(arr.view(np.uint32)))
    return bits.astype(np.uint32).view(np.float64).tolist()


def check_same_everywhere(value: str, what: str):
    """Raises unless ``value`` (a string) is identical on every process: what process 0 saves
    for all of them (e.g. the data iterator's state) must be true for all of them."""
    import hashlib

    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return
    digest = np.frombuffer(hashlib.sha256(value.encode()).digest(), np.uint32)
    # Gathered, not broadcast: every process must see a mismatch and raise, or the
    # ones that did not would wait forever at the next collective.
    every = np.asarray(multihost_utils.process_allgather(digest)).astype(np.uint32).reshape(-1, digest.size)
    odd = [i for i in range(len(every)) if not np.array_equal(every[i], every[0])]
    if odd:
        raise RuntimeError(
            f"{what} differs between process 0 and process(es) {odd} (this is process "
            f"{jax.process_index()}: {value!r}); the processes fell out of step"
        )
