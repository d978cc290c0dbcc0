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

import re

MAX_JPEG_SCANS = 64
# libjpeg writes about a dozen header segments; an ICC profile takes at most 255 more.
MAX_HEADER_ITEMS = 1 << 16
# Pillow joins a JPEG's Exif (APP1) segments into one bytes object, copying the joined part at each: 1,500
# of 64 kB (98 MB) took 52 s and 375 MB to open. A camera writes one.
MAX_EXIF_SEGMENTS = 16
# Pillow copies each APPn (metadata) segment of a JPEG's header and keeps the copies. A radiograph
# carries kB of them; the largest that is legitimate, an ICC profile split over 255 APP2 segments,
# takes about 16 MB.
MAX_JPEG_APP_BYTES = 32 << 20
# Pillow parses the resource blocks of a Photoshop (APP13) segment in Python, one at a time. A real
# file holds a few dozen.
MAX_PHOTOSHOP_RESOURCES = MAX_HEADER_ITEMS
_PHOTOSHOP = b"Photoshop 3.0\x00"
_STANDALONE = {0x00, 0x01, *range(0xD0, 0xD9)}  # markers without a length field
# The next marker whose segment matters: FF then a byte other than stuffing (00), fill (FF), TEM
# (01) or RSTn (D0-D7), none of which has a length. The last FF of a run of fill matches.
_MARKER = re.compile(b"\xff[^\x00\x01\xd0-\xd7\xff]")


def count_scans(data: bytes) -> int:
    """The scans libjpeg would decode from ``data``: its start-of-scan markers, found as libjpeg finds markers.

    Segments are stepped over by their length fields, so an FF DA inside an Exif thumbnail or
    an APPn/COM payload is not a scan; counting stops at the first end-of-image (libjpeg reads
    no further: an MPO's later frames are not decoded). As in libjpeg, a marker is FF, any fill
    FFs, then a byte other than 00 (stuffing, in coded data) or FF; RSTn and TEM have no
    length. Data that does not start with SOI, and the tail past ``MAX_HEADER_ITEMS`` segments
    (walked here one at a time), count every FF DA they hold: never fewer than libjpeg meets.
    """
    data = bytes(data)
    if data[:2] != b"\xff\xd8":
        return data.count(b"\xff\xda")
    scans, i = 0, 2
    for _ in range(MAX_HEADER_ITEMS):
        found = _MARKER.search(data, i)  # in C: coded data's stuffing and restarts never reach Python
        if found is None:
            return scans
        at, marker = found.start(), data[found.start() + 1]
        if marker == 0xD9:
            return scans
        scans += marker == 0xDA
        # The entropy-coded data of a scan starts after its header, as a segment's next marker does.
        length = 0 if marker == 0xD8 else max(2, int.from_bytes(data[at + 2 : at + 4], "big"))
        i = at + 2 + length
    return scans + data.count(b"\xff\xda", i)


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
    return _walk_header(data, stop)[0]


def count_exif_segments(data: bytes) -> int:
    """Exif APP1 segments before the first scan of JPEG ``data`` (within its first ``MAX_HEADER_ITEMS`` items)."""
    return _walk_header(data, MAX_HEADER_ITEMS)[1]


def _walk_header(data: bytes, stop: int) -> tuple[int, int]:
    """(items, Exif APP1 segments) before the first scan of JPEG ``data``, walked no further than ``stop`` items."""
    n, i, items, exif = len(data), 2, 0, 0
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
            exif += data[i + 1] == 0xE1 and data[i + 4 : i + 10] == b"Exif\x00\x00"
            items, i = items + 1, i + 2 + length
    return items, exif


def check_header(data: bytes, path: str, error: type[Exception], what: str = "a JPEG") -> None:
    """Raises ``error`` naming ``path`` when JPEG ``data`` holds over ``MAX_HEADER_ITEMS`` items before its first
    scan, over ``MAX_EXIF_SEGMENTS`` Exif segments, or too much metadata (``check_app_segments``)."""
    items, exif = _walk_header(data, MAX_HEADER_ITEMS)
    if items > MAX_HEADER_ITEMS:
        raise error(
            f"{path}: {what} of more than {MAX_HEADER_ITEMS:,} segments, fill or stray bytes before its first scan, "
            "over what is read (Pillow reads each one by one)"
        )
    if exif > MAX_EXIF_SEGMENTS:
        raise error(
            f"{path}: {what} of {exif:,} Exif segments, over the {MAX_EXIF_SEGMENTS} read (Pillow joins them into one, "
            "copying what it has joined so far at each)"
        )
    check_app_segments(data, path, error, what)


def header_segments(data: bytes):
    """``(marker, start, end)`` of each segment before a JPEG's first scan, its payload ``data[start:end]``.

    Stepped over by their length fields, as Pillow reads them; fill and stray bytes are passed
    over. Walk it once ``check_header`` has bounded how many items there are.
    """
    i, n = 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF:  # stray bytes
            i = data.find(b"\xff", i)
            if i < 0:
                return
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill before a marker
            i += 1
            continue
        if marker in (0xDA, 0xD9):  # the first scan, or the end: Pillow's header stops here
            return
        if marker in _STANDALONE:
            i += 2
            continue
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        yield marker, i + 4, min(end, n)
        i = max(end, i + 2)


def frame_marker(data: bytes) -> int | None:
    """The start-of-frame marker (0xC0 to 0xCF) of JPEG ``data``, None where it is not a JPEG or has none."""
    if data[:2] != b"\xff\xd8":
        return None
    # DHT (C4), JPG (C8) and DAC (CC) share the range without starting a frame.
    return next((m for m, _, _ in header_segments(data) if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC)), None)


def check_app_segments(data: bytes, path: str, error: type[Exception], what: str = "a JPEG") -> None:
    """Raises ``error`` naming ``path`` when JPEG ``data`` holds too much metadata for Pillow to parse.

    Over ``MAX_JPEG_APP_BYTES`` in its APPn segments (Pillow copies each), or over
    ``MAX_PHOTOSHOP_RESOURCES`` resource blocks in its Photoshop (APP13) segments (Pillow parses
    each in Python), counted as the "8BIM" signatures the segments hold: every block starts with
    one, so the count is never below the blocks Pillow parses.
    """
    if data[:2] != b"\xff\xd8":
        return
    by_marker, resources = {}, 0
    for marker, start, end in header_segments(data):
        if 0xE0 <= marker <= 0xEF:
            by_marker[marker] = by_marker.get(marker, 0) + max(end - start, 0)
            if marker == 0xED and data.startswith(_PHOTOSHOP, start):
                resources += data.count(b"8BIM", start, end)
    total = sum(by_marker.values())
    if total > MAX_JPEG_APP_BYTES:
        largest = max(by_marker, key=by_marker.get)
        raise error(
            f"{path}: {what} of {total:,} bytes of APPn metadata segments ({by_marker[largest]:,} in APP"
            f"{largest - 0xE0} segments), over the {MAX_JPEG_APP_BYTES:,} read (Pillow copies each; an ICC "
            "profile takes at most 16 MB)"
        )
    if resources > MAX_PHOTOSHOP_RESOURCES:
        raise error(
            f"{path}: {what} of {resources:,} resource blocks in its Photoshop (APP13) segments, over the "
            f"{MAX_PHOTOSHOP_RESOURCES:,} read (Pillow parses each one by one)"
        )
