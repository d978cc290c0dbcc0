"""A zip's central directory, read from its end record and held to a bound before ``zipfile`` opens it.

``zipfile.ZipFile`` builds one ``ZipInfo`` per central-directory entry as it opens, so a
downloaded zip (a data set, a ``.pth``, an ``.npz``) of a few MB listing millions of empty
members would allocate GBs before any of our checks ran. The end-of-central-directory record
(and its zip64 form) says how many entries the directory holds and how large it is; it is
read here, the way ``zipfile`` finds it, and each caller bounds it (``check``) before building
a ``ZipFile``: an explicit member count where its files have one, and the decoded-size budget
(``effnet_jax.limits``) always. A missing or corrupt record is one line naming the file.
"""

from __future__ import annotations

import bz2
import copy
import dataclasses
import lzma
import os
import struct
import zipfile
import zlib

import effnet_jax.limits as limits

_END = struct.Struct("<4s4H2LH")  # signature, disk, disk of directory, entries here, entries, size, offset, comment
_END_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # signature, disk of zip64 record, its offset, disks
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")  # signature, size, versions, disks, entries here, entries, size, offset
_ZIP64_END_SIGNATURE = b"PK\x06\x06"
# The end record is searched for in the file's last 64 KiB and its own size, as zipfile does (a
# comment after it is at most 65,535 bytes).
_SEARCHED_BYTES = (1 << 16) + _END.size
# The smallest central-directory entry (its fixed fields, an empty name): a directory of N bytes
# makes zipfile build up to N / 46 entries, whatever count the end record declares.
MIN_ENTRY_BYTES = 46
# What zipfile keeps per entry besides the directory's own bytes (a ZipInfo, its date tuple,
# its dict and list slots): under 450 bytes on CPython 3.11, rounded up.
ENTRY_OBJECT_BYTES = 512


class ZipDirectoryError(ValueError):
    """A zip whose end record is missing or corrupt; the message names the file, ``reason`` says what is wrong."""

    reason = ""


def _corrupt(path, reason: str) -> ZipDirectoryError:
    error = ZipDirectoryError(f"{path}: {reason}")
    error.reason = reason
    return error


@dataclasses.dataclass(frozen=True)
class ZipDirectory:
    """What a zip's end record declares about its central directory."""

    entries: int  # the members it lists
    size: int  # its bytes
    offset: int  # where the record says it starts
    start: int  # where zipfile reads it from: right before the end records (data may precede the zip)
    zip64: bool

    def possible_entries(self) -> int:
        """The most entries zipfile may build: the declared count, or as many of the smallest as ``size`` holds."""
        return max(self.entries, self.size // MIN_ENTRY_BYTES)

    def memory_bytes(self) -> int:
        """What opening the zip may allocate: the directory read whole, its names kept, an object per entry."""
        return 2 * self.size + self.possible_entries() * ENTRY_OBJECT_BYTES


def _read_at(f, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def _find_end_record(f, path, file_size: int) -> int:
    """The offset of the end record, found where zipfile finds it: last in the file, else before a comment."""
    if file_size >= _END.size:
        tail = _read_at(f, file_size - _END.size, _END.size)
        if tail.startswith(_END_SIGNATURE) and tail.endswith(b"\0\0"):
            return file_size - _END.size
    search_from = max(file_size - _SEARCHED_BYTES, 0)
    found = _read_at(f, search_from, file_size - search_from).rfind(_END_SIGNATURE)
    if found < 0:
        raise _corrupt(path, "no zip end record; not a zip, or cut short")
    if search_from + found + _END.size > file_size:
        raise _corrupt(path, "the zip end record is cut short")
    return search_from + found


def _zip64_fields(f, path, end_at: int):
    """The zip64 end record's (entries, size, offset) when its locator precedes the end record, else None.

    zipfile takes the zip64 record whenever the locator is there, whatever the 32-bit fields say,
    and assumes it sits right before the locator; so does this.
    """
    locator_at = end_at - _ZIP64_LOCATOR.size
    if locator_at < 0:
        return None
    signature, disk, _, disks = _ZIP64_LOCATOR.unpack(_read_at(f, locator_at, _ZIP64_LOCATOR.size))
    if signature != _ZIP64_LOCATOR_SIGNATURE:
        return None
    if disk != 0 or disks > 1:
        raise _corrupt(path, "a zip spanning several disks; only single-file zips are read")
    record_at = locator_at - _ZIP64_END.size
    record = _read_at(f, record_at, _ZIP64_END.size) if record_at >= 0 else b""
    if len(record) != _ZIP64_END.size or not record.startswith(_ZIP64_END_SIGNATURE):
        raise _corrupt(path, "a zip64 end locator without its zip64 end record")
    *_, entries, size, offset = _ZIP64_END.unpack(record)
    return entries, size, offset


def read(f, path) -> ZipDirectory:
    """The central directory that the end record of open binary file ``f`` declares; ``path`` names it in errors.

    ``ZipDirectoryError`` for a file with no end record, a record cut short, a zip64 locator
    without its record, or a directory larger than what precedes the end records.
    """
    file_size = f.seek(0, os.SEEK_END)
    end_at = _find_end_record(f, path, file_size)
    *_, entries, size, offset, _ = _END.unpack(_read_at(f, end_at, _END.size))
    zip64 = _zip64_fields(f, path, end_at)
    directory_end = end_at
    if zip64 is not None:
        (entries, size, offset), directory_end = zip64, end_at - _ZIP64_LOCATOR.size - _ZIP64_END.size
    if size > directory_end:
        raise _corrupt(
            path,
            f"the zip end record declares a central directory of {size:,} bytes, more than the "
            f"{directory_end:,} before it (corrupt or cut short)",
        )
    return ZipDirectory(entries, size, offset, directory_end - size, zip64 is not None)


def check(f, path, *, max_entries: int | None = None, what: str = "a zip", error: type[Exception] = ZipDirectoryError):
    """``read``, then the directory held to ``max_entries`` members (when given) and to the budget; rewinds ``f``.

    ``what`` names the kind of file in the refusals (``"a PyTorch checkpoint"``); they are
    raised as ``error`` (the caller's own type), as are a missing or corrupt end record's.
    """
    try:
        directory = read(f, path)
    except ZipDirectoryError as e:
        raise error(str(e)) from None
    if max_entries is not None and directory.entries > max_entries:
        raise error(f"{path}: a zip listing {directory.entries:,} members; {what} holds at most {max_entries:,}")
    shown = f"the zip directory of {what} ({directory.entries:,} members declared in {directory.size:,} bytes)"
    limits.check(path, directory.memory_bytes(), shown, error)
    f.seek(0)
    return directory


def open_checked(path, **bounds):
    """Regular file ``path`` opened for reading, its zip directory checked (``check``'s ``bounds``) and rewound.

    The caller closes it. A FIFO or device, or a ``limits.FoundInFolder`` path that is a link
    out of its folder, is refused as ``bounds['error']``; ``OSError`` when it cannot be opened.
    """
    error = bounds.get("error", ZipDirectoryError)
    try:
        source = limits.open_path(path)  # a FoundInFolder path only inside its folder
    except limits.BudgetError as e:
        raise error(str(e)) from None
    try:
        check(source, path, **bounds)
    except BaseException:
        source.close()
        raise
    return source


class _ZipFileOwningItsFile(zipfile.ZipFile):
    """A ``ZipFile`` over an open file that it closes with itself (``ZipFile`` leaves a file it is given open)."""

    def __init__(self, source, path):
        self._source = source
        super().__init__(source)
        self.filename = os.fspath(path)  # not the descriptor number the file object is named by

    def close(self):
        try:
            super().close()
        finally:
            self._source.close()


def open_zip(path, **bounds) -> zipfile.ZipFile:
    """``zipfile.ZipFile`` reading ``path``, built only once its directory passed ``check(**bounds)``.

    The directory is checked on the descriptor the archive then reads, so a file swapped in
    after the check is never opened. ``zipfile.BadZipFile`` as ``ZipFile`` raises it.
    """
    source = open_checked(path, **bounds)
    try:
        return _ZipFileOwningItsFile(source, path)
    except BaseException:
        source.close()
        raise


# zipfile inflates a deflated member no further than a read asks for; a bzip2 or LZMA member's
# compressed chunk (4 KiB or more) goes to its decompressor whole, with no bound on the output:
# 1 kB of bzip2 declaring 5 kB inflated to 1.5 GB (3.2 GB at the peak) before zipfile cut it.
_INFLATED_BY_ZIPFILE = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_COMPRESSED_CHUNK = 1 << 16
# A zip LZMA member starts with a version (2 bytes), the size of the properties (2 bytes) and
# the properties: 5 bytes, the same as the first 5 of an .lzma ("alone") file's header.
_LZMA_HEAD = struct.Struct("<2BH")
_LZMA_PROPERTIES = 5


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The bytes of member ``info``: at most its declared ``file_size``, decompressing no further than that.

    Stored and deflated members are read by zipfile (which bounds deflate by the read); bzip2
    and LZMA members are decompressed here, a chunk at a time with their output bounded, since
    zipfile inflates each compressed chunk whole. Errors are zipfile's: ``RuntimeError`` for an
    encrypted member, ``NotImplementedError`` for another method, ``zipfile.BadZipFile`` for a
    bad CRC or a damaged header, and the decompressors' own (``OSError``, ``lzma.LZMAError``).
    """
    if info.compress_type in _INFLATED_BY_ZIPFILE or info.flag_bits & 0x1:
        with archive.open(info) as f:  # an encrypted member: RuntimeError, as zipfile says
            return f.read(info.file_size)
    if info.compress_type not in (zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        archive.open(info).close()  # NotImplementedError naming the method
        raise NotImplementedError(f"compression method {info.compress_type}")
    raw = copy.copy(info)  # the compressed bytes, read as stored, checked against no CRC
    raw.compress_type, raw.file_size, raw.CRC = zipfile.ZIP_STORED, info.compress_size, None
    out = bytearray()
    with archive.open(raw) as f:
        if info.compress_type == zipfile.ZIP_BZIP2:
            decompressor = bz2.BZ2Decompressor()
        else:
            head = f.read(_LZMA_HEAD.size)
            if len(head) < _LZMA_HEAD.size or _LZMA_HEAD.unpack(head)[2] != _LZMA_PROPERTIES:
                raise zipfile.BadZipFile(f"LZMA member {info.filename!r}: a damaged LZMA header")
            # The properties and an unknown size make an .lzma header; memlimit bounds the dictionary it declares.
            decompressor = lzma.LZMADecompressor(lzma.FORMAT_ALONE, memlimit=limits.budget())
            out += decompressor.decompress(f.read(_LZMA_PROPERTIES) + b"\xff" * 8, 0)
        while len(out) < info.file_size and not decompressor.eof:
            chunk = f.read(_COMPRESSED_CHUNK) if decompressor.needs_input else b""
            if not chunk and decompressor.needs_input:
                break  # cut short: the CRC below says so
            out += decompressor.decompress(chunk, info.file_size - len(out))
        if not decompressor.eof and decompressor.decompress(
            b"" if not decompressor.needs_input else f.read(1 << 12), 1
        ):
            raise zipfile.BadZipFile(
                f"{info.filename!r} inflates past the {info.file_size:,} bytes it declares (a zip bomb?)"
            )
    if zlib.crc32(out) != info.CRC:
        raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}")
    return bytes(out)
