"""How many scans a JPEG codestream holds: each is a pass over the whole image when decoded.

A progressive JPEG is decoded whole again for each of its scans: a scan of a few bytes that
changes nothing costs a pass over every block (10 ms at 4096x4096), so 100 kB of them take
minutes. libjpeg writes 6 (grey) to 10 (colour) scans, hand-written scan scripts a few dozen.
Image files (``imaging``) and the JPEG frames of DICOM files (``dicom``) are both held to
``MAX_JPEG_SCANS`` here, in a module of its own because ``imaging`` imports ``dicom``.
"""

from __future__ import annotations

MAX_JPEG_SCANS = 64


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
