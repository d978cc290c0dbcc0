"""DICOM radiographs -> 8-bit grayscale, as a reader of the display would show them.

The steps follow DICOM PS3.3 C.11: the modality LUT (rescale slope/intercept or a
Modality LUT Sequence), then the first VOI transform (window centre/width, or a VOI
LUT Sequence), then MONOCHROME1 (white = low values) is inverted so that bone is
bright as in MONOCHROME2. The VOI output range is stretched to 0..255; without a VOI
the image's own range is (as ``imaging.to_gray`` does for 16-bit files). pydicom
does the decoding and the LUTs (the ``dicom`` extra); a compressed transfer syntax
that no installed decoder handles is refused with one line naming the file.
"""

from __future__ import annotations

import io

import numpy as np

# 128-byte preamble, then the magic: how a DICOM Part 10 file announces itself.
_MAGIC_OFFSET, _MAGIC = 128, b"DICM"
# As large as Pillow accepts before calling an image a decompression bomb (about 179 M pixels).
MAX_PIXELS = 2 * 89_478_485


class DicomError(ValueError):
    """A DICOM file that cannot be used as a radiograph; the message names the file."""


def is_dicom(data: bytes) -> bool:
    """Whether ``data`` starts like a DICOM Part 10 file (preamble + 'DICM')."""
    return data[_MAGIC_OFFSET : _MAGIC_OFFSET + len(_MAGIC)] == _MAGIC


def _pydicom():
    try:
        import pydicom
        import pydicom.pixels
    except ImportError:
        raise DicomError(
            "reading DICOM needs pydicom: pip install 'effnet_jax[dicom]' (or pip install pydicom)"
        ) from None
    return pydicom


def read_gray(data: bytes, path: str) -> np.ndarray:
    """The first frame of the DICOM file ``data`` (read from ``path``) as a ``(H, W)`` uint8 image."""
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as e:  # pydicom raises InvalidDicomError, EOFError, struct/value errors...
        raise DicomError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from e
    if "PixelData" not in ds:
        raise DicomError(f"{path}: DICOM file without pixel data (a report or structured document?)")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if rows < 1 or cols < 1 or rows * cols * samples > MAX_PIXELS:
        raise DicomError(f"{path}: DICOM image of {rows}x{cols}x{samples} pixels (expected 1 to {MAX_PIXELS})")
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    try:
        # Only the first frame: a multi-frame file may decode to far more than it stores.
        pixels = (
            pydicom.pixels.pixel_array(ds, index=0) if int(ds.get("NumberOfFrames", 1) or 1) > 1 else ds.pixel_array
        )
    except Exception as e:
        if syntax is not None and syntax.is_compressed:
            raise DicomError(
                f"{path}: DICOM transfer syntax {syntax.name} ({syntax}) is compressed and cannot be decoded here "
                f"({type(e).__name__}); convert it to an uncompressed syntax, or install a pydicom decoder plugin for it"
            ) from e
        raise DicomError(f"{path}: cannot decode DICOM pixel data ({type(e).__name__}: {e})") from e
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if pixels.ndim == 3 and pixels.shape[-1] == 3 and pixels.dtype == np.uint8:
            # 8-bit colour (a secondary capture): luma, as Pillow converts RGB files.
            from PIL import Image

            return np.asarray(Image.fromarray(pixels, mode="RGB").convert("L"))
        raise DicomError(f"{path}: DICOM PhotometricInterpretation {photometric!r} is not a grayscale radiograph")
    try:
        values = np.asarray(pydicom.pixels.apply_modality_lut(pixels, ds), np.float64)
        low, high = _voi_range(pydicom, ds)
        if low is not None:
            values = np.asarray(pydicom.pixels.apply_voi_lut(values, ds, index=0), np.float64)
    except Exception as e:  # malformed LUT descriptors or window values
        raise DicomError(f"{path}: bad DICOM modality/VOI LUT ({type(e).__name__}: {e})") from e
    check_finite(values, low, high, path)
    if low is None or not high > low:
        low, high = float(values.min()), float(values.max())
    if photometric == "MONOCHROME1":
        values = (low + high) - values  # exact for integer-valued data: the twin of a MONOCHROME2 image
    gray = _to_uint8(values, low, high)
    if gray.min() == gray.max():
        raise DicomError(
            f"{path}: every pixel is {int(gray.min())} after the DICOM rescale and window: a blank image, "
            "nothing to diagnose (check RescaleSlope, WindowCenter and WindowWidth)"
        )
    return gray


def check_finite(values: np.ndarray, low: float | None, high: float | None, path: str) -> None:
    """Refuses pixels or a VOI range made NaN or infinite by the file's tags: the image would come out blank."""
    if low is not None and not (np.isfinite(low) and np.isfinite(high)):
        raise DicomError(
            f"{path}: the DICOM window (WindowCenter / WindowWidth or VOI LUT) gives a non-finite range "
            f"[{low}, {high}]; refusing an image it would blank"
        )
    if not np.isfinite(values).all():
        raise DicomError(
            f"{path}: {int(np.size(values) - np.isfinite(values).sum())} non-finite pixel value(s) after the DICOM "
            "rescale / window (a NaN or infinite RescaleSlope, RescaleIntercept, WindowCenter or WindowWidth?)"
        )


def _voi_range(pydicom, ds) -> tuple[float | None, float | None]:
    """The output range of the file's first VOI transform, or ``(None, None)`` when it has none.

    Found by passing the lowest and highest possible inputs through it: a window clips
    them to its output limits, a VOI LUT to its first and last entries.
    """
    if "WindowCenter" not in ds and "WindowWidth" not in ds and not ds.get("VOILUTSequence"):
        return None, None
    if ds.get("VOILUTSequence"):  # preferred over a window by apply_voi_lut; indexes with integers
        probe = np.array([-(2**31), 2**31 - 1], np.int64)
    else:
        probe = np.array([-(2.0**40), 2.0**40], np.float64)
    out = np.asarray(pydicom.pixels.apply_voi_lut(probe, ds, index=0), np.float64)
    return float(out.min()), float(out.max())


def _to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (np.asarray(values, np.float64) - low) * (255.0 / (high - low)) if high > low else np.zeros(values.shape)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)
