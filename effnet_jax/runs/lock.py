"""One trainer per workdir: an exclusive ``fcntl.flock`` on ``WORKDIR/.lock``.

The kernel drops a flock when its holder dies (even by SIGKILL), so a lock file left
by a dead trainer is simply taken over: there is no stale state to judge. The file
holds the holder's host and PID, for the message a second trainer prints.

Multi-host runs take it on process 0 only; it guards against a second run on the same
host (flock does not reach across NFS clients or object stores: ``gs://`` workdirs are
not locked).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket

from effnet_jax.output_files import open_output_fd
from effnet_jax.runs.layout import Layout

log = logging.getLogger("effnet_jax.train")


class WorkdirLockedError(RuntimeError):
    """Another live trainer holds the workdir."""


class WorkdirLock:
    """Held from ``acquire()`` to ``release()`` (or process exit)."""

    def __init__(self, workdir: str):
        self.path = Layout(workdir).lock
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        # Never through a link, FIFO or shared file planted at the name: it is truncated below.
        fd = open_output_fd(self.path, os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = (
                os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process that has not written its PID yet"
            )
            os.close(fd)
            raise WorkdirLockedError(
                f"workdir {os.path.dirname(self.path)} is in use by another trainer ({holder}; lock {self.path}); "
                "wait for it, stop it, or use another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self):
        if self._fd is not None:
            # The file stays: unlinking it would let a third trainer lock a new inode while a
            # second one still waits on the old.
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def lock_workdir(workdir: str, is_main_process: bool) -> WorkdirLock | None:
    """The workdir's lock, held; ``None`` where there is nothing to lock (other processes, remote dirs)."""
    if not is_main_process:
        return None
    if "://" in str(workdir):
        log.info("workdir %s is remote: not locked against a second trainer", workdir)
        return None
    return WorkdirLock(workdir).acquire()
