"""How many scans a JPEG codestream holds: each is a pass over the whole image when decoded.

A progressive JPEG is decoded whole again for each of its scans: a scan of a few bytes that
changes nothing costs a pass over every block (10 ms at 4096x4096), so 100 kB of them take
minutes. libjpeg writes 6 (grey) to 10 (colour) scans, hand-written scan scripts a few dozen.
Image files (``imaging``) and the JPEG frames of DICOM files (``dicom``) are both held to
``MAX_JPEG_SCANS`` here, in a module of its own because ``imaging`` imports ``dicom``.

Pillow reads what comes before the first scan (the header) in Python, one segment, fill byte or
stray byte at a time: 7.8 M empty comment segments (31 MB) took 8.5 s and 570 MB to open. The
header is held to ``MAX_HEADER_ITEMS`` of them, counted here without building anything.
"""

from __future__ import annotations

MAX_JPEG_SCANS = 64
# libjpeg writes about a dozen header segments; an ICC profile takes at most 255 more.
MAX_HEADER_ITEMS = 1 << 16
_STANDALONE = {0x00, 0x01, *range(0xD0, 0xD9)}  # markers without a length field


def count_scans(data: bytes) -> int:
    """Start-of-scan markers in ``data``: coded data never holds 0xFF 0xDA (it stuffs 0xFF 0x00)."""
    return bytes(data).count(b"\xff\xda")


def check_scans(data: bytes, path: str, error: type[Exception], what: str = "a JPEG") -> None:
    """Raises ``error`` naming ``path`` when the JPEG codestream ``data`` holds more than ``MAX_JPEG_SCANS`` scans."""
    scans = count_scans(data)
    if scans > MAX_JPEG_SCANS:
        raise error(
            f"{path}: {what} of {scans:,} scans, over the {MAX_JPEG_SCANS} decoded (each scan is a pass over the "
            "whole image)"
        )


def count_header_items(data: bytes, stop: int = MAX_HEADER_ITEMS) -> int:
    """Segments, fill bytes and stray bytes before the first scan of JPEG ``data``, counted no further than past ``stop``."""
    n, i, items = len(data), 2, 0
    while i + 1 < n and items <= stop:
        if data[i] != 0xFF:  # stray bytes: Pillow steps over them one at a time
            j = data.find(b"\xff", i)
            j = n if j < 0 else j
            items, i = items + j - i, j
        elif data[i + 1] == 0xFF:  # a fill byte before a marker
            items, i = items + 1, i + 1
        elif data[i + 1] in (0xDA, 0xD9):  # the first scan, or the end: Pillow's header stops here
            break
        else:
            length = 0 if data[i + 1] in _STANDALONE else int.from_bytes(data[i + 2 : i + 4], "big")
            items, i = items + 1, i + 2 + length
    return items


def check_header(data: bytes, path: str, error: type[Exception], what: str = "a JPEG") -> None:
    """Raises ``error`` naming ``path`` when JPEG ``data`` holds over ``MAX_HEADER_ITEMS`` items before its first scan."""
    if count_header_items(data) > MAX_HEADER_ITEMS:
        raise error(
            f"{path}: {what} of more than {MAX_HEADER_ITEMS:,} segments, fill or stray bytes before its first scan, "
            "over what is read (Pillow reads each one by one)"
        )
