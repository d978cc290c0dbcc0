"""The decoded-size budget: how much memory one untrusted file may make a reader allocate.

Every reader of a file that may come from anyone (images, DICOM, weight files, exported
models) first computes what the file declares it will expand to (pixels times bytes per
pixel, the intermediate copies the reader makes, a pickle's objects, an HDF5 dataset's
shape) and calls ``check`` before decoding anything. A file declaring more is refused
with one line naming it, so a file of a few MB cannot drive a command far past its
usual memory. ``docs/untrusted-inputs.md`` lists what each reader counts.

The budget is ``DEFAULT_BUDGET`` (512 MiB: a 4000 x 4000 16-bit DICOM or EfficientNet-B7's
weights need about half of it) unless ``EFFNET_JAX_DECODE_BUDGET`` says otherwise, in
bytes or with a K, M or G suffix (``EFFNET_JAX_DECODE_BUDGET=2G``); read at each check,
so it also reaches data-loading worker processes.
"""

from __future__ import annotations

import os
import re
import stat

ENV_VAR = "EFFNET_JAX_DECODE_BUDGET"
DEFAULT_BUDGET = 512 << 20
# Images larger than this on disk are not radiographs; a file is refused from its size before
# any byte is read (a sparse file of GBs costs nothing to make).
MAX_IMAGE_FILE_BYTES = 128 << 20
# A pickle or a JSON header becomes Python objects several times its size (a one-byte opcode
# makes a list of 56 bytes): such parts are held to the budget divided by this.
OBJECT_EXPANSION = 32
# Containers nested deeper than this inside a weight pickle or a JSON file are refused: the files
# we write nest a few levels, and deeper structures only serve to exhaust the interpreter's stack.
MAX_NESTING = 32

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class BudgetError(ValueError):
    """A file that declares more decoded data than the budget allows; the message names the file."""


def budget(environ=None) -> int:
    """The decoded-size budget in bytes: ``EFFNET_JAX_DECODE_BUDGET`` when set, else ``DEFAULT_BUDGET``."""
    value = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    if not value:
        return DEFAULT_BUDGET
    match = re.fullmatch(r"(\d+)\s*([KMG]?)(?:i?B)?", value, re.IGNORECASE)
    if match is None or int(match.group(1)) < 1:
        raise BudgetError(f"{ENV_VAR}={value!r}: expected a positive byte count such as 536870912, 512M or 2G")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def check(path, declared: int, what: str, error: type[Exception] = BudgetError, limit: int | None = None) -> None:
    """Raises ``error`` naming ``path`` when ``declared`` bytes (what decoding ``what`` takes) exceed the budget."""
    limit = budget() if limit is None else limit
    if declared > limit:
        raise error(
            f"{path}: {what} would take {declared:,} bytes to decode, over the decoded-size budget of "
            f"{limit:,} bytes (set {ENV_VAR} to change it)"
        )


def padded_batch_size(batch_size: int, image_size: int, key: str = "batch_size") -> int:
    """``batch_size``, refused (ValueError naming ``key``) below 1 or when one padded float32 batch is over the budget.

    Evaluation and prediction pad every batch to this many images, so ``--batch_size=10**12``
    would allocate petabytes for two images instead of failing in one line.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{key}={batch_size!r}: expected an integer >= 1")
    what = f"a batch of {batch_size:,} images of {image_size}x{image_size}x3 float32"
    check(f"{key}={batch_size}", batch_size * image_size * image_size * 3 * 4, what, ValueError)
    return batch_size


def available_memory(meminfo: str = "/proc/meminfo") -> int | None:
    """Bytes of memory the kernel could give this process now (Linux's ``MemAvailable``), None where unknown."""
    try:
        with open(meminfo, "rb") as f:
            for line in f.read(1 << 16).decode("ascii", "replace").splitlines():
                name, _, value = line.partition(":")
                if name == "MemAvailable" and value.split()[1:] == ["kB"]:
                    return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def object_limit() -> int:
    """The largest pickle or JSON header a reader parses into Python objects, in bytes."""
    return budget() // OBJECT_EXPANSION


def open_regular_file(path: str, follow_symlinks: bool = True):
    """``path`` opened for reading in binary mode, refused (``BudgetError``) unless it is a regular file.

    A FIFO or device would block ``open`` or ``read`` forever: the file is opened with
    ``O_NONBLOCK`` (a FIFO then opens at once) and the *open descriptor* is checked with
    ``fstat``, so a FIFO swapped in after a ``stat`` cannot block; reads are blocking again
    after the check. ``follow_symlinks=False`` adds ``O_NOFOLLOW``: a symbolic link is then an
    ``OSError`` with ``errno.ELOOP``. ``OSError`` when the file cannot be opened. The caller
    closes the returned file (``with open_regular_file(path) as f``); ``os.fstat(f.fileno())``
    gives its size.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BudgetError(f"{path}: not a regular file (a FIFO, device or folder)")
        os.set_blocking(fd, True)
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_open_file(f, path: str, limit: int, what: str = "one image") -> bytes:
    """The bytes of ``f`` (from ``open_regular_file``), refused (``BudgetError``) from its size when over ``limit``."""
    size = os.fstat(f.fileno()).st_size
    if size > limit:
        raise BudgetError(f"{path}: {size:,} bytes, larger than the {limit:,} accepted for {what}")
    data = f.read(limit + 1)  # bounded even if the file grows while being read
    if len(data) > limit:
        raise BudgetError(f"{path}: grew past {limit:,} bytes while being read")
    return data


def read_text_file(path: str, what: str, errors: str = "strict") -> str:
    """The UTF-8 text of regular file ``path`` (a report a downloaded run holds), at most ``object_limit()`` bytes.

    A FIFO, a device (a link to /dev/zero), a file over the limit (checked before reading) or
    one that is not UTF-8 is a ValueError naming the file (and the line of the first bad byte);
    ``FileNotFoundError`` when it is missing. ``what`` names the file's kind in the size refusal;
    ``errors="replace"`` reads bad bytes as U+FFFD instead (a file only searched).
    """
    try:
        with open_regular_file(path) as f:
            data = read_open_file(f, path, object_limit(), f"{what} (budget / {OBJECT_EXPANSION})")
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8", errors)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text") from None


def read_regular_file(path: str, limit: int = MAX_IMAGE_FILE_BYTES, follow_symlinks: bool = True) -> bytes:
    """The bytes of regular file ``path``, refused from its size (``BudgetError``) when over ``limit``.

    A FIFO or device would block ``open`` or ``read`` forever, so only regular files are read
    (``BudgetError`` too), checked on the open descriptor (``open_regular_file``); ``OSError``
    when the file cannot be opened. Links are followed unless ``follow_symlinks=False``: the
    callers read files a user named (images, exclusion lists). A ``FoundInFolder`` path is
    read only where it really lies inside the folder it was found in (``open_in_folder``).
    """
    with open_path(path, follow_symlinks) as f:
        return read_open_file(f, path, limit)


def open_path(path, follow_symlinks: bool = True):
    """``open_regular_file(path)``; a ``FoundInFolder`` path only where it lies inside its folder (``open_in_folder``)."""
    if isinstance(path, FoundInFolder):
        return open_in_folder(path, path.folder, path.allow)
    return open_regular_file(os.fspath(path), follow_symlinks)


# --- Links inside walked folders ---------------------------------------------------------------
# Image folders come from anyone: a file found by walking one is read only where it really lies
# inside it, so a planted link (train/NORMAL/x.jpeg -> ~/.ssh/id_rsa) reads nothing outside.


class LinkOutsideError(BudgetError):
    """A file found by walking a folder that is a link leading outside it; the message names the link.

    A ``BudgetError``: refused before a byte is read, so every reader that skips or reports
    a file over budget treats it the same way.
    """

    def __init__(self, path, target: str, folder, allow: str):
        # ``reason`` without the path, for callers that name the file themselves.
        self.reason = (
            f"a link to {target}, outside the folder {folder} it was found in; not read "
            f"({allow} to follow links wherever they point)"
        )
        super().__init__(f"{path}: {self.reason}")


class FoundInFolder(str):
    """A path found by walking ``folder`` (not named by the user): a plain ``str`` that
    ``read_regular_file`` reads only where it lies inside ``folder``. ``allow`` says how to
    follow links anyway (``'pass --follow_links'``)."""

    def __new__(cls, path: str, folder: str, allow: str):
        found = super().__new__(cls, path)
        found.folder, found.allow = folder, allow
        return found

    def __getnewargs__(self):
        return str(self), self.folder, self.allow


def _inside(top: str, target: str) -> bool:
    return os.path.commonpath([top, target]) == top


def resolve_in_folder(path, folder, allow: str) -> str:
    """The real path of ``path``, a file found by walking ``folder``; ``LinkOutsideError`` when it lies outside.

    ``OSError`` for a link that loops or leads nowhere, as opening it would raise.
    """
    target = os.path.realpath(path, strict=True)
    if not _inside(os.path.realpath(folder), target):
        raise LinkOutsideError(path, target, folder, allow)
    return target


def _opened_path(fd: int) -> str | None:
    """Where open descriptor ``fd`` really is (Linux's /proc), or None where that cannot be told."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def open_in_folder(path, folder, allow: str):
    """``open_regular_file(path)`` for a file found by walking ``folder``: a link must lead inside it.

    ``folder=None`` follows links wherever they point (the user asked to). Else the real path
    is opened without following links, and the open file's own path checked again where
    /proc tells it, so a link swapped in between the check and the open cannot lead out.
    ``LinkOutsideError`` for a link out; ``OSError`` for one that loops or leads nowhere.
    """
    if folder is None:
        return open_regular_file(path)
    f = open_regular_file(resolve_in_folder(path, folder, allow), follow_symlinks=False)
    opened = _opened_path(f.fileno())
    if opened is not None and opened.startswith(os.sep) and not _inside(os.path.realpath(folder), opened):
        f.close()
        raise LinkOutsideError(path, opened, folder, allow)
    return f


def json_nesting(value) -> int:
    """How deep lists and dicts nest in a parsed JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest
