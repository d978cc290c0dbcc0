"""What the training loop shows while it runs: a progress bar or progress lines, and honest img/s.

The bar is ``effnet_jax.progress.Progress`` (on a terminal); in a file or a pipe each
metrics flush logs one plain progress line with the loss, img/s and the time left.
"""

from __future__ import annotations

import logging
import math
import time

import jax

from effnet_jax.progress import Progress

log = logging.getLogger("effnet_jax.train")


class Throughput:
    """Training images per second over the steps since the last reading, other work left out.

    The loop calls ``step()`` after each train step, ``reading(outputs)`` when it flushes metrics,
    and ``restart()`` after work that is not training (the first step, which compiles;
    evaluation; checkpointing): the time and the steps before a restart do not count.
    """

    def __init__(self, batch_size: int, clock=time.perf_counter):
        self.batch_size = int(batch_size)
        self._clock = clock
        self.restart()

    def restart(self) -> None:
        self._started, self._steps = self._clock(), 0

    def step(self) -> None:
        self._steps += 1

    def reading(self, outputs=None) -> tuple[float, float] | None:
        """(images per second, seconds per step) since the last restart or reading; None without timed steps.

        ``outputs``: what the counted steps returned, waited for before the clock is read. JAX
        dispatches a step before it runs, so without the wait the steps still queued on the
        device would count as done in no time (thousands of img/s after every restart).
        """
        if outputs is not None:
            jax.block_until_ready(outputs)
        steps, seconds = self._steps, self._clock() - self._started
        self.restart()
        if steps == 0:
            return None
        seconds = max(seconds, 1e-9)
        return steps * self.batch_size / seconds, seconds / steps


class TrainProgress:
    """Steps done out of ``total``: a live bar on a terminal (``interactive``), progress lines elsewhere."""

    def __init__(self, total: int, initial: int, desc: str, *, stream=None, interactive: bool | None = None):
        self.total, self.desc = int(total), desc
        # Off a terminal the loop's own lines (``report``) carry loss and speed: no count lines.
        self._progress = Progress(
            total, desc, unit="step", initial=initial, lines=False, logger=log, stream=stream, interactive=interactive
        )
        self.interactive = self._progress.interactive

    @property
    def step(self) -> int:
        return self._progress.done

    def advance(self) -> None:
        self._progress.update(1)

    def report(self, loss: float, speed: tuple[float, float] | None) -> None:
        """Shows the latest training loss and the ``Throughput`` reading (None: no timed steps yet)."""
        if self.interactive:
            postfix = {"loss": f"{loss:.4f}"}
            if speed is not None:
                postfix["img_s"] = f"{speed[0]:.1f}"
            self._progress.set_postfix(**postfix)
            return
        rate = (
            "" if speed is None else f", {speed[0]:.1f} img/s, ETA {_clock_time((self.total - self.step) * speed[1])}"
        )
        log.info(
            "%s: step %d/%d (%d%%), loss %.4f%s",
            self.desc,
            self.step,
            self.total,
            math.floor(100 * self.step / max(self.total, 1)),
            loss,
            rate,
        )

    def close(self) -> None:
        self._progress.close()


def _clock_time(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
