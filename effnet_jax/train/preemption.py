"""Stop at a step boundary when SIGTERM arrives (what spot and preemptible VMs send before killing).

One process: a Python handler sets a flag that the loop reads after each step. Several
processes must stop at the same step, or the ones that go on wait forever at the next
collective: JAX's preemption sync manager (started by ``jax.distributed``, which catches
SIGTERM itself) makes every process answer True at the same step. Where it is disabled,
each process's flag is gathered at log steps instead.
"""

from __future__ import annotations

import logging
import signal
import threading

import numpy as np

log = logging.getLogger("effnet_jax.train")


class Preempted(Exception):
    """The run stopped on SIGTERM after saving its state; running the same command resumes it."""


class StopSignal:
    """``should_stop(step, sync)``: True on every process at the same step once SIGTERM was received."""

    def __init__(self):
        import jax

        self.received = False
        self._previous = None
        self._multi = jax.process_count() > 1
        self._jax_sync = self._multi  # until it proves unavailable
        if not self._multi:
            self._install()

    def _install(self):
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: SIGTERM will not stop training cleanly")
            return
        self._previous = signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame):
        del signum, frame
        if not self.received:
            log.warning("SIGTERM: saving at the end of this step, then exiting")
        self.received = True

    def should_stop(self, step: int, sync: bool) -> bool:
        """Asked after each step; ``sync`` marks steps where a multi-process fallback may gather flags."""
        if not self._multi:
            return self.received
        from jax.experimental import multihost_utils

        if self._jax_sync:
            try:
                reached = bool(multihost_utils.reached_preemption_sync_point(step))
                if reached:
                    log.warning("preemption notice: every process saves at step %d, then exits", step)
                return reached
            except RuntimeError:  # the preemption service is off (jax_enable_preemption_service)
                self._jax_sync = False
                self._install()
        if not sync:
            return False
        flags = multihost_utils.process_allgather(np.asarray([int(self.received)], np.int32))
        return bool(np.any(np.asarray(flags)))

    def close(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
