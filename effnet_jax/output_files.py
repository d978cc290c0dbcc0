"""Writing output files safely when names and folders may come from someone else.

- ``open_output(path)`` (and ``write_text(path, text)``, replaced whole, which also takes gs:// URLs) never writes through a symbolic link, a FIFO, a device or a file
  with other hard links planted at ``path``: it opens with ``O_NOFOLLOW`` and checks what
  it opened before truncating it. A regular file of our own (an earlier run's) is
  overwritten. ``open_output_fd`` is the same check for a file kept as a descriptor (a lock).
- ``csv_cell(value)`` neutralises a text cell a spreadsheet would read as a formula
  (leading ``= + - @``, tab or carriage return) by prefixing a single quote, as
  spreadsheets expect; ``csv_text`` undoes it for our own readers.
- ``printable(text)`` writes a file name that is not valid UTF-8 (Python keeps its bytes
  as surrogates) with backslash escapes (``\\xff``), so one odd name cannot stop a CSV
  or JSON-lines file part way.
- ``file_ids(paths)`` and ``input_problem(path, ids)`` keep an output from replacing one of the
  inputs it was derived from (an output folder that is the input folder).
- ``slug(text)`` and ``short_hash(text)`` derive file and folder names from user paths,
  so no name we write is ever joined from one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import stat

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class UnsafeOutputError(ValueError):
    """An output path we refuse to write (a link, FIFO, device or multiply linked file); names the path."""


def open_output(path: str | os.PathLike, mode: str = "w", **kwargs) -> io.IOBase:
    """``open(path, mode)`` for writing ('w', 'wb') or appending ('a'), refusing whatever is not a plain file of our own at ``path``.

    Created with mode 0o666 (less the umask) when absent. Raises UnsafeOutputError naming
    ``path`` for a symbolic link, a non-regular file or a file with other hard links.
    """
    if mode not in ("w", "wb", "a"):
        raise ValueError(f"open_output: mode {mode!r}, expected 'w', 'wb' or 'a'")
    fd = open_output_fd(path, os.O_WRONLY | (os.O_APPEND if mode == "a" else 0), 0o666)
    try:
        if mode != "a":
            os.ftruncate(fd, 0)
        return open(fd, mode, closefd=True, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def open_output_fd(path: str | os.PathLike, flags: int = os.O_WRONLY, create_mode: int = 0o666) -> int:
    """``os.open(path, flags | O_CREAT)`` (nothing truncated), refusing what ``open_output`` refuses; the caller closes it.

    For files kept open as descriptors (a workdir's lock, read and written with ``pread`` /
    ``pwrite``): a link planted at the name would otherwise be followed and truncated.
    """
    path = os.fspath(path)
    flags |= os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        # O_NONBLOCK: a FIFO planted at the name must not block the open.
        fd = os.open(path, flags, create_mode)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):
            raise UnsafeOutputError(f"{path}: is a symbolic link; refusing to write through it") from e
        if e.errno == errno.ENXIO:
            raise UnsafeOutputError(f"{path}: is a FIFO or socket, not a file; refusing to write to it") from e
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeOutputError(f"{path}: not a regular file (a FIFO, device or folder); refusing to write to it")
        if st.st_nlink > 1:
            raise UnsafeOutputError(f"{path}: has {st.st_nlink} hard links; refusing to overwrite a shared file")
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def replaced_output(path: str | os.PathLike, mode: str = "w", **kwargs):
    """A file opened (``open_output``) beside ``path`` as ``path.tmp`` and renamed over ``path`` once written.

    A kill or an error mid-write leaves the earlier file whole (a report, a page, a calibration),
    never half of the new one. What ``open_output`` refuses at ``path`` itself is refused first:
    the rename would put the file in place of a planted link silently instead of naming it.
    """
    path = os.fspath(path)
    if os.path.lexists(path):
        os.close(open_output_fd(path, os.O_RDONLY))  # UnsafeOutputError naming a link, FIFO or shared file
    tmp = f"{path}.tmp"
    f = open_output(tmp, mode, **kwargs)
    try:
        with f:
            yield f
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        named = _naming(e, path)
        if named is e:
            raise
        raise named from e
    os.replace(tmp, path)


def _naming(error: BaseException, path: str) -> BaseException:
    """``error``, or for an OSError that names no file (a write on a full disk), the same error naming ``path``."""
    if isinstance(error, OSError) and error.filename is None and error.errno is not None:
        return OSError(error.errno, error.strerror, path)
    return error


def write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` written to ``path``: through ``replaced_output`` on a local disk, through etils.epath for a URL (gs://...).

    Replaced whole: a kill mid-write leaves the earlier file (a run's config.json, an exclusion
    list) as it was, never cut short.
    """
    path = os.fspath(path)
    if "://" in path:
        from etils import epath  # cloud storage has no links to plant

        epath.Path(path).write_text(text)
        return
    with replaced_output(path) as f:
        f.write(text)


def output_file_problem(path: str, flag: str) -> str | None:
    """Why ``open_output`` would refuse ``path`` (``flag=path: ...``), checked before any work; None if it would not."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"{flag}={path}: cannot check it ({e.strerror or e})"
    if stat.S_ISLNK(st.st_mode):
        return f"{flag}={path}: is a symbolic link; refusing to write through it"
    if not stat.S_ISREG(st.st_mode):
        return f"{flag}={path}: not a regular file (a FIFO, device or folder); refusing to write to it"
    if st.st_nlink > 1:
        return f"{flag}={path}: has {st.st_nlink} hard links; refusing to overwrite a shared file"
    return None


def file_ids(paths) -> set[tuple[int, int]]:
    """(device, inode) of each of ``paths`` that exists (links followed, as inputs are read): for ``input_problem``."""
    ids = set()
    for path in paths:
        try:
            st = os.stat(path)
        except (OSError, ValueError):  # gone, unreadable, or a NUL in the name: nothing to protect
            continue
        ids.add((st.st_dev, st.st_ino))
    return ids


def input_problem(path: str, input_ids: set[tuple[int, int]]) -> str | None:
    """Why writing ``path`` would replace one of a run's inputs (``file_ids``); None when it would not.

    An output folder may be an input folder: an overlay named ``y.gradcam.png`` must not
    overwrite an input image of that very name, nor ``--out`` the file it is about to read.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if (st.st_dev, st.st_ino) in input_ids:
        return f"{path}: is one of the inputs; refusing to overwrite it"
    return None


def inside_problem(path: str, folder: str, flag: str, what: str) -> str | None:
    """``flag=path: inside what ...`` when ``path`` (links resolved) is ``folder`` or below it; else None.

    Some folders must hold only what their owner writes there: a folder named ``7`` made in a
    run's ``checkpoints/`` reads as a checkpoint, and the run no longer loads.
    """
    real, base = os.path.realpath(path), os.path.realpath(folder)
    if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
        return f"{flag}={path}: inside {what} ({folder}); give a folder outside it"
    return None


def printable(text: str) -> str:
    """``text`` with bytes that were not UTF-8 (surrogate escapes) written as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def printable_line(text: str) -> str:
    """``printable(text)`` with control and other unprintable characters (a newline, an escape code, a
    right-to-left override) written as backslash escapes: a file name that stays one line in a message."""
    text = printable(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


# Mid-line markdown that could open raw HTML (``<`` before a tag name), a link, a code span,
# emphasis or a table cell; ``>`` and the rest read as themselves mid-line.
_MARKDOWN_ACTIVE = re.compile(r"([\\`*\[\]|]|<(?=[A-Za-z/!?]))")


def markdown_text(value) -> str:
    """Text from files we did not write (a downloaded run's), on one line with no markdown effect.

    A newline in a folder name would otherwise start a heading of its own in a model card
    ("## Intended use ...") and a ``<`` raw HTML; escaped, it reads as the file says.
    """
    return _MARKDOWN_ACTIVE.sub(r"\\\1", printable_line(str(value)))


def markdown_code(value) -> str:
    """Text from files we did not write, as an inline code span on one line, however many backticks it holds."""
    text = printable_line(str(value))
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def csv_cell(value):
    """A CSV cell: text that a spreadsheet would run as a formula gets a leading ``'``; numbers stay."""
    if not isinstance(value, str):
        return value
    value = printable(value)
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def csv_text(cell: str) -> str:
    """The text ``csv_cell`` wrote to ``cell`` (a neutralised formula loses its quote)."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_STARTS) else cell


def short_hash(text: str, length: int = 8) -> str:
    """Hex digits of SHA-256 of ``text`` (its bytes as the file system gave them)."""
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:length]


def slug(text: str, limit: int = 60) -> str:
    """Letters, digits, ``.``, ``_`` and ``-`` of ``text``, never starting with a dot; 'x' when none are left."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", printable(text)).strip("._")[:limit]
    return cleaned or "x"
