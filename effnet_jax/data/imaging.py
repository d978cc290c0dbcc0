"""Turn one raw image file into stored bytes: grayscale uint8, shorter side <= max_size, JPEG.

Odd inputs are converted where the meaning is clear (16-bit, RGBA, CMYK, palette,
bilevel) and rejected with BadImageError, naming the file, where it is not. DICOM
files are recognised by their magic bytes and read by ``dicom.read_gray`` (rescale,
VOI windowing, MONOCHROME1 inverted).
"""

import io
import warnings

import numpy as np
from PIL import Image

from effnet_jax.data import dicom

JPEG_QUALITY = 95  # high: decoding cost is the same, and the originals are already lossy


class BadImageError(ValueError):
    """A file that cannot be used as an image; the message starts with its path."""


def to_gray(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit grayscale ('L')."""
    if im.mode == "L":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # High bit depth: stretch the image's own range to 0..255. A fixed shift would
        # leave 10/12-bit X-rays (stored in 16-bit containers) nearly black.
        arr = np.asarray(im, dtype=np.float64)
        if not np.isfinite(arr).all():
            # One NaN or inf would blank the whole stretched image, which would then be scored.
            bad = int(arr.size - np.isfinite(arr).sum())
            raise BadImageError(f"{bad} non-finite pixel value(s) (NaN or inf) in a {im.mode} image")
        lo, hi = float(arr.min()), float(arr.max())
        if not hi > lo:
            raise BadImageError(f"every pixel of this {im.mode} image is {lo:g}: a blank image, nothing to diagnose")
        scaled = (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent pixels carry no X-ray signal: composite onto black (film background).
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    if im.mode in ("CMYK", "P", "1", "YCbCr", "LAB", "HSV", "RGB", "RGBX", "La"):
        return im.convert("RGB").convert("L") if im.mode not in ("RGB", "1") else im.convert("L")
    raise BadImageError(f"unsupported image mode {im.mode!r}")


def resize_shorter(im: Image.Image, max_size: int) -> Image.Image:
    """Downscale so the shorter side is at most max_size, keeping the aspect ratio."""
    w, h = im.size
    short = min(w, h)
    if short <= max_size:
        return im
    scale = max_size / short
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def decode_file(data: bytes, path: str) -> Image.Image:
    """`data` (the bytes of file `path`, an image or DICOM file) as an 8-bit grayscale image.

    Raises BadImageError naming `path`.
    """
    if dicom.is_dicom(data):
        try:
            return Image.fromarray(dicom.read_gray(data, path), mode="L")
        except dicom.DicomError as e:
            raise BadImageError(str(e)) from e
    try:
        with warnings.catch_warnings():
            # Pillow warns (not raises) on some damaged files; treat those as bad too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            im.load()  # full decode: truncated or corrupt data fails here, not later in training
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError...)
        if isinstance(e, Image.UnidentifiedImageError):
            raise BadImageError(f"{path}: not an image (Pillow recognises no image format in it)") from e
        raise BadImageError(f"{path}: corrupt or truncated image ({type(e).__name__}: {e})") from e
    if im.width < 1 or im.height < 1:
        raise BadImageError(f"{path}: empty image ({im.width}x{im.height})")
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)  # multi-frame TIFF/GIF: the first frame is the radiograph
    try:
        return to_gray(im)
    except BadImageError as e:
        raise BadImageError(f"{path}: {e}") from e


def load_for_storage(data: bytes, path: str, max_size: int) -> tuple[bytes, tuple[int, int]]:
    """Decode `data` (the bytes of file `path`), normalise it, and re-encode it for storage.

    Returns (encoded JPEG bytes, (height, width)). Raises BadImageError naming `path`.
    """
    return store_gray(decode_file(data, path), max_size, data)


def store_gray(gray: Image.Image, max_size: int, original: bytes | None = None) -> tuple[bytes, tuple[int, int]]:
    """The stored copy of an 8-bit grayscale image: (JPEG bytes, (height, width)), shorter side <= max_size.

    `original` is the file `gray` was decoded from: an 8-bit grey JPEG that needs no
    resize is kept as it is (to_gray returns the opened file itself, format kept).
    """
    resized = resize_shorter(gray, max_size)
    if original is not None and gray.format == "JPEG" and resized is gray:
        return original, (gray.height, gray.width)  # already what we store: no re-compression
    out = io.BytesIO()
    resized.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue(), (resized.height, resized.width)
