"""Progress of every long operation (a bar on a terminal, plain log lines elsewhere); library noise off.

One helper for training, evaluation, data scans and preparation, and export. On a
terminal a tqdm bar stays at the bottom, log records go through ``tqdm.write`` while it
is up (so a log line never lands on the bar's line), and a terminal that reports zero
columns still gets a bar of a fixed width. In a file or a pipe a bar's carriage returns
and cursor-up codes would glue its updates into one endless line, so there the helper
logs whole lines instead: one each time another tenth of the work is done.
"""

from __future__ import annotations

import logging
import math
import os
import sys

log = logging.getLogger("effnet_jax")

# The width of a bar on a terminal that reports no size (some CI consoles, `script` sessions).
FALLBACK_COLUMNS = 80


def on_terminal(stream=None) -> bool:
    """True when ``stream`` (default: stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


class Progress:
    """``done`` of ``total`` units of work, shown as a bar on a terminal and as log lines elsewhere.

    ``total`` may be None (unknown): then only the closing line counts the work. With
    ``lines=False`` nothing is logged off a terminal (the caller reports its own lines, as
    the trainer does at each metrics flush). ``enabled=False`` shows nothing at all.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "it",
        initial: int = 0,
        enabled: bool = True,
        lines: bool = True,
        logger: logging.Logger | None = None,
        stream=None,
        interactive: bool | None = None,
    ):
        self.total = None if total is None else int(total)
        self.done, self.desc, self.unit = int(initial), desc, unit
        self.enabled, self.lines = bool(enabled), bool(lines)
        self._log = logger or log
        stream = sys.stderr if stream is None else stream
        self.interactive = self.enabled and (on_terminal(stream) if interactive is None else bool(interactive))
        self._tenths = self._tenth(self.done)
        self._bar = self._redirect = None
        if self.interactive:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            width = {"dynamic_ncols": True} if _columns(stream) > 0 else {"ncols": FALLBACK_COLUMNS}
            self._bar = tqdm(total=self.total, initial=self.done, desc=desc, unit=unit, file=stream, **width)
            self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger("effnet_jax"), logging.getLogger()])
            self._redirect.__enter__()

    def _tenth(self, done: int) -> int:
        return 0 if not self.total else math.floor(10 * done / self.total)

    def update(self, n: int = 1) -> None:
        self.done += int(n)
        if self._bar is not None:
            self._bar.update(n)
            return
        tenths = self._tenth(self.done)
        if self.enabled and self.lines and tenths > self._tenths and self.done < (self.total or 0):
            self._log.info("%s", self.describe())
        self._tenths = tenths

    def set_postfix(self, **fields) -> None:
        """Shows ``fields`` after the bar (on a terminal only; lines off a terminal stay plain counts)."""
        if self._bar is not None:
            self._bar.set_postfix(fields, refresh=False)

    def describe(self) -> str:
        """One plain line: ``desc: done/total unit (P%)``, or ``desc: done unit`` when the total is unknown."""
        if not self.total:
            return f"{self.desc}: {self.done:,} {self.unit}"
        percent = math.floor(100 * self.done / self.total)
        return f"{self.desc}: {self.done:,}/{self.total:,} {self.unit} ({percent}%)"

    def wrap(self, iterable):
        """Yields from ``iterable``, counting one unit per item, and closes at the end."""
        try:
            for item in iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def close(self) -> None:
        """Ends the bar, or logs the closing line off a terminal (once; later calls do nothing)."""
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self.lines and not self.interactive and self.done > 0:
            self._log.info("%s", self.describe())
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Library warnings that say nothing a user can act on, matched by their message format.
NOISE = (
    # orbax, on every read-only restore (evaluation, prediction, export): expected there.
    "Given directory is read only",
    "CheckpointManagerOptions.read_only=True, setting save_interval_steps=0",
    # TFDS, when it lists a data_dir that holds a folder being prepared (or one a failed
    # preparation left): our own code finds prepared data by its dataset_info.json.
    "Variant folder %s has no %s",
    # orbax, on saves between evaluations: they carry no metrics by design.
    "Requested `tracked_metric`",
    # TFDS, each time a builder gets a config made at run time (a folder task, an exclusion
    # list): the config is ours, named by what it prepares.
    "Using custom data configuration",
)


def drop_library_noise(record: logging.LogRecord) -> bool:
    """A logging filter: False for the library warnings listed in ``NOISE``."""
    message = str(record.msg)
    return not any(noise in message for noise in NOISE)


def quiet_library_noise() -> None:
    """Installs ``drop_library_noise`` on absl's logger (where TFDS and orbax log), once."""
    absl = logging.getLogger("absl")
    if drop_library_noise not in absl.filters:
        absl.addFilter(drop_library_noise)


# The unraisable hook ``quiet_closed_loop_callbacks`` found in place, to which it passes everything else.
_NEXT_UNRAISABLE_HOOK = []


def _drop_closed_loop_callbacks(unraisable) -> None:
    """``sys.unraisablehook`` that drops tensorstore's late callbacks into a closed event loop."""
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return
    (_NEXT_UNRAISABLE_HOOK[0] if _NEXT_UNRAISABLE_HOOK else sys.__unraisablehook__)(unraisable)


def _drop_unretrieved_reads(record: logging.LogRecord) -> bool:
    """A filter for asyncio's logger: False for the failed reads of tasks nobody awaited any more."""
    first = str(record.msg).split("\n", 1)[0]  # then "future: <Task ...>"
    return not first.endswith("exception was never retrieved")  # a Task's or a Future's


def quiet_closed_loop_callbacks() -> None:
    """Installs ``_drop_closed_loop_callbacks`` and ``_drop_unretrieved_reads``, once.

    When one read of a damaged checkpoint fails, orbax raises and closes its event loop while
    tensorstore's other reads are still running; each of them then reports "Event loop is
    closed" as a traceback on stderr (hundreds, for a checkpoint with truncated data), or
    asyncio logs its failed task or future ("... exception was never retrieved", with a traceback),
    after the one-line error that names the checkpoint. Every other unraisable error is
    reported, and every other asyncio record logged, as before.
    """
    if sys.unraisablehook is not _drop_closed_loop_callbacks:
        _NEXT_UNRAISABLE_HOOK[:] = [sys.unraisablehook]
        sys.unraisablehook = _drop_closed_loop_callbacks
    asyncio_log = logging.getLogger("asyncio")
    if _drop_unretrieved_reads not in asyncio_log.filters:
        asyncio_log.addFilter(_drop_unretrieved_reads)
