"""What the training loop shows while it runs: a progress bar or progress lines, and honest img/s.

On a terminal a tqdm bar stays at the bottom, and log records (ours and the root
logger's) go through ``tqdm.write`` while it is up, so a log line never lands on the
bar's line. In a file or a pipe a bar's carriage returns would glue its updates and the
log lines into one endless line, so there each metrics flush logs one plain progress line.
"""

from __future__ import annotations

import logging
import math
import sys
import time

log = logging.getLogger("effnet_jax.train")


class Throughput:
    """Training images per second over the steps since the last reading, other work left out.

    The loop calls ``step()`` after each train step, ``reading()`` when it flushes metrics,
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

    def reading(self) -> tuple[float, float] | None:
        """(images per second, seconds per step) since the last restart or reading; None without timed steps."""
        steps, seconds = self._steps, self._clock() - self._started
        self.restart()
        if steps == 0:
            return None
        seconds = max(seconds, 1e-9)
        return steps * self.batch_size / seconds, seconds / steps


class TrainProgress:
    """Steps done out of ``total``: a live bar on a terminal (``interactive``), progress lines elsewhere."""

    def __init__(self, total: int, initial: int, desc: str, *, stream=None, interactive: bool | None = None):
        self.total, self.step, self.desc = int(total), int(initial), desc
        stream = stream if stream is not None else sys.stderr
        self.interactive = stream.isatty() if interactive is None else bool(interactive)
        self._bar = self._redirect = None
        if self.interactive:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(
                total=self.total, initial=self.step, desc=desc, unit="step", dynamic_ncols=True, file=stream
            )
            self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger("effnet_jax"), logging.getLogger()])
            self._redirect.__enter__()

    def advance(self) -> None:
        self.step += 1
        if self._bar is not None:
            self._bar.update(1)

    def report(self, loss: float, speed: tuple[float, float] | None) -> None:
        """Shows the latest training loss and the ``Throughput`` reading (None: no timed steps yet)."""
        if self._bar is not None:
            postfix = {"loss": f"{loss:.4f}"}
            if speed is not None:
                postfix["img_s"] = f"{speed[0]:.1f}"
            self._bar.set_postfix(postfix, refresh=False)
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
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _clock_time(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
