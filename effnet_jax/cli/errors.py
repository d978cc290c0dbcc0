"""How a command fails: exit statuses, one line for an error with a known cause, failed writes said once."""

import errno
import logging as std_logging
import os
import re
import sys

# Exit statuses of effnet-train and data preparation (docs/untrusted-inputs-overview.md). An error
# a user can act on is one line naming the file, key or cause; anything else is a bug and
# keeps its traceback. EFFNET_TRACEBACK=1 shows the traceback of every error.
EXIT_USAGE = 2  # a bad flag or config key; a non-finite training loss
EXIT_INPUT = (
    3  # the data (layout, bad image, empty class, stale prepared copy), a weight file, soup members that differ
)
EXIT_WORKDIR = 4  # the workdir is held by another trainer, its checkpoint does not fit the config, it holds another run than a soup, or a link or FIFO where we write
EXIT_DISK = 5  # writing failed: disk full, quota, read-only or permission denied
EXIT_PREEMPTED = 143  # stopped by SIGTERM after saving (128 + SIGTERM, as if killed by it)

_WRITE_ERRNOS = ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG")


def one_line(error: BaseException) -> tuple[int, str] | None:
    """``(exit status, message)`` for an error with a known cause; None for anything else."""
    # Imported when an error is met, not with the command: these modules load JAX, orbax and
    # the data pipeline, which --help and a bad flag never need.
    from effnet_jax.data.external import ExternalDataError
    from effnet_jax.data.imaging import BadImageError
    from effnet_jax.data.kermany import LayoutError
    from effnet_jax.data.prepare import StalePreparedDataError
    from effnet_jax.data.prepared_files import PreparedDataError
    from effnet_jax.output_files import UnsafeOutputError
    from effnet_jax.runs.checkpoints import CheckpointMismatchError
    from effnet_jax.runs.lock import WorkdirLockedError
    from effnet_jax.train.loop import TrainingDataError
    from effnet_jax.train.soup import IncompatibleMembersError, SoupWorkdirError
    from effnet_jax.weights.readers import WeightFileError

    # Background writers (orbax, grain) wrap the OSError: look down the chain for the cause.
    chain, seen = [], error
    while seen is not None and len(chain) < 20:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for e in chain:
        if isinstance(e, OSError) and e.errno in {getattr(errno, n, None) for n in _WRITE_ERRNOS} - {None}:
            where = f" {e.filename}" if e.filename else ""
            return EXIT_DISK, f"cannot write{where}: {e.strerror or e} (errno {errno.errorcode.get(e.errno)})"
    for e in chain:
        found = disk_error_text(str(e))
        if found:  # tensorstore (orbax's writer) reports a full disk as a ValueError with the OS's words
            return EXIT_DISK, f"cannot write{found[1]}: {found[0]}"
    if isinstance(error, (WorkdirLockedError, CheckpointMismatchError, SoupWorkdirError, UnsafeOutputError)):
        return EXIT_WORKDIR, str(error)
    if isinstance(
        error,
        (
            LayoutError,
            BadImageError,
            TrainingDataError,
            StalePreparedDataError,
            PreparedDataError,
            WeightFileError,
            ExternalDataError,
            IncompatibleMembersError,
        ),
    ):
        return EXIT_INPUT, " ".join(str(error).split("\n  ")[:2]) + _more(error)
    if isinstance(error, FileNotFoundError) and error.errno is None:
        return EXIT_INPUT, str(error)  # ours: a message naming the missing file or config key
    if isinstance(error, ValueError) and re.match(r"(config|data|model)\.\w+", str(error)):
        return EXIT_USAGE, str(error).splitlines()[0]  # ours: 'config.key=value: expected ...'
    return None


# How a write error reads when a library (tensorstore, under orbax) turned it into text.
_DISK_TEXT = (
    r"No space left on device|Disk quota exceeded|Read-only file system|File too large"
    r"|os_error_code='(?:28|122|30|27)'"
)


def disk_error_text(text: str) -> tuple[str, str] | None:
    """``(the OS's words, ' PATH' or '')`` when ``text`` reports a failed write (disk full, quota, read-only)."""
    match = re.search(_DISK_TEXT, text)
    if match is None:
        return None
    words = match.group(0)
    if words.startswith("os_error_code"):
        words = {"28": "No space left on device", "122": "Disk quota exceeded", "30": "Read-only file system"}.get(
            words.split("'")[1], "File too large"
        )
    path = re.search(r'(?:local file|Failed writing:) "([^"]+)"', text)
    return words, f" {path.group(1)}" if path else ""


class DiskErrorsInOneLine:
    """A logging filter: the first record carrying a failed write becomes one line; the rest are dropped.

    Orbax's background save threads log every failed write with its traceback, and asyncio
    repeats each at exit; the command's own one-line error says it once.
    """

    def __init__(self):
        self.seen = False

    def filter(self, record) -> bool:
        if getattr(record, "disk_error_said", False):
            return True  # the line this filter wrote, met again by a handler further up

        try:
            text = record.getMessage()
        except (TypeError, ValueError):  # a record whose arguments do not fit its format
            text = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]!r}"
        found = disk_error_text(text)
        if found is None:
            return True
        if self.seen:
            return False
        self.seen = True
        record.msg, record.args, record.exc_info, record.exc_text = (
            f"writing failed{found[1]}: {found[0]} (a background save; the run stops at its next wait)",
            (),
            None,
            None,
        )
        record.levelno, record.levelname = std_logging.ERROR, "ERROR"
        record.disk_error_said = True
        return True


def quiet_disk_errors() -> None:
    """Installs ``DiskErrorsInOneLine`` on absl's and asyncio's loggers and on the root logger's handlers."""
    shared = DiskErrorsInOneLine()
    for target in (std_logging.getLogger("absl"), std_logging.getLogger("asyncio"), *std_logging.getLogger().handlers):
        target.addFilter(shared)


def _more(error) -> str:
    # Bad-image errors list every file, one per line: show the first and count the rest.
    lines = str(error).split("\n  ")
    return f" (+{len(lines) - 2} more; all listed with EFFNET_TRACEBACK=1)" if len(lines) > 2 else ""


def exit_in_one_line(prog: str, error: BaseException):
    """Prints ``prog: message`` and exits with its status when ``error`` has a known cause; else re-raises."""
    known = one_line(error)
    if known is None or os.environ.get("EFFNET_TRACEBACK"):
        raise error
    status, message = known
    print(f"{prog}: {message}", file=sys.stderr)
    if status == EXIT_DISK:
        # Background writers' futures report the same failure again at exit: it has been said.
        std_logging.disable(std_logging.CRITICAL)
    sys.exit(status)
