"""Uploaded files checked against the server's budgets, then prepared for the model.

An upload comes from anyone. Before a pixel is decoded it must be non-empty, no larger than
``max_file_bytes``, a JPEG, PNG or DICOM file by its first bytes, and (JPEG, PNG) declare no
more than ``max_pixels`` in its header; decoding is then held to the decoded-size budget
(``effnet_jax.limits``) by the same readers effnet-predict uses. A refusal is an
``UploadError`` carrying the HTTP status and one line naming the file.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
from PIL import Image

from effnet_jax import serving
from effnet_jax.data import dicom, imaging

MAX_NAME_CHARS = 120
log = logging.getLogger("effnet_jax.server")

PAYLOAD_TOO_LARGE = 413
UNSUPPORTED_TYPE = 415
UNPROCESSABLE = 422

_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"))


class UploadError(ValueError):
    """An upload refused with ``status``; ``str()`` is one line naming the file."""

    def __init__(self, status: int, message: str):
        super().__init__(" ".join(message.split()))
        self.status = status


def display_name(filename: str | None, index: int) -> str:
    """The upload's file name as it may be echoed back: printable, one line, at most ``MAX_NAME_CHARS``."""
    name = "".join(c if c.isprintable() else "?" for c in " ".join((filename or "").split())) or f"upload-{index + 1}"
    return name if len(name) <= MAX_NAME_CHARS else name[: MAX_NAME_CHARS - 3] + "..."


def file_kind(data: bytes) -> str | None:
    """'JPEG', 'PNG' or 'DICOM' from the file's first bytes; None for anything else."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    return "DICOM" if dicom.is_dicom(data) else None


def check_header(data: bytes, name: str, kind: str, max_pixels: int) -> None:
    """Refuses a JPEG or PNG whose header declares more than ``max_pixels``, before decoding it."""
    if kind == "DICOM":  # its reader checks the declared size itself (dicom.MAX_PIXELS and the budget)
        return
    try:  # Pillow reads the header an item at a time, in Python: count them first
        imaging.check_header_items(data, name)
    except imaging.ImageBudgetError as e:
        raise UploadError(PAYLOAD_TOO_LARGE, str(e)) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # The header only, and only as the kind its first bytes named (no other Pillow plugin).
            width, height = Image.open(io.BytesIO(data), formats=(kind,)).size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UploadError(PAYLOAD_TOO_LARGE, f"{name}: {e}") from None
    except Exception as e:  # Pillow raises many types on a damaged header
        raise UploadError(UNPROCESSABLE, f"{name}: corrupt {kind} header ({type(e).__name__}: {e})") from None
    if width * height > max_pixels:
        raise UploadError(
            PAYLOAD_TOO_LARGE,
            f"{name}: a {kind} image of {width}x{height} pixels, over the {max_pixels:,} pixels one upload may have",
        )


def prepare(model, data: bytes, name: str, max_file_bytes: int, max_pixels: int) -> np.ndarray:
    """The uploaded file ``data`` -> the model's ``(S, S)`` uint8 input, or ``UploadError``.

    ``data`` may have been read only up to ``max_file_bytes + 1`` bytes: enough to know it is too large.
    """
    if len(data) > max_file_bytes:
        raise UploadError(PAYLOAD_TOO_LARGE, f"{name}: over the {max_file_bytes:,} bytes one upload may have")
    if not data:
        raise UploadError(UNPROCESSABLE, f"{name}: empty file")
    kind = file_kind(data)
    if kind is None:
        raise UploadError(UNSUPPORTED_TYPE, f"{name}: not a JPEG, PNG or DICOM file (judged by its first bytes)")
    check_header(data, name, kind, max_pixels)
    try:
        return model.prepare_bytes(data, name)
    except serving.ImageBudgetError as e:
        raise UploadError(PAYLOAD_TOO_LARGE, str(e)) from None
    except serving.ImageInputError as e:
        raise UploadError(UNPROCESSABLE, str(e)) from None
    except Exception as e:  # a decoder failing in a way no check foresaw: this upload is unprocessable, not a 500
        log.exception("effnet-serve: preparing the upload %s failed", name)
        raise UploadError(UNPROCESSABLE, f"{name}: cannot be read as an image ({type(e).__name__})") from None
