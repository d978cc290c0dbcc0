"""Turn one raw image file into stored bytes: grayscale uint8, shorter side <= max_size, JPEG.

Odd inputs are converted where the meaning is clear (16-bit, RGBA, CMYK, palette,
bilevel) and rejected with BadImageError, naming the file, where it is not. DICOM
files are recognised by their magic bytes and read by ``dicom.read_gray`` (rescale,
VOI windowing, MONOCHROME1 inverted).

Before a file's pixels are decoded, what decoding and the conversion to grey will take is
computed from its header (width x height x the mode's bytes, the conversion's copies) and
held to the decoded-size budget of ``effnet_jax.limits``. So is the work Pillow would do in
Python, an item at a time: a JPEG's header segments, a PNG's chunks, a GIF's blocks before its
first image, a BMP's RLE runs.
"""

import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageMode

from effnet_jax import limits
from effnet_jax.data import dicom, jpeg_scans

JPEG_QUALITY = 95  # high: decoding cost is the same, and the originals are already lossy
# High-bit-depth images are scaled to 0..255 a block of about this many pixels at a time.
BLOCK_PIXELS = 1 << 18
# Bytes per pixel that ``to_gray`` and the stored copy take beyond the decoded image, by mode:
# a copy as a numpy array (16-bit, 32-bit) or the RGB(A) copies of a conversion (4 bytes a
# pixel in Pillow), the 8-bit result, and its resized copy. Other modes: the largest.
_CONVERSION_BYTES = {"L": 1, "1": 6, "I;16": 4, "I;16B": 4, "I;16L": 4, "I;16N": 4, "I": 6, "F": 6, "RGB": 6}
_MAX_CONVERSION_BYTES = 18
# Pillow keeps a pointer (8 bytes) per row of each image: a 1 x 80,000,000 PNG strip took 640 MB of
# them. Counted for the decoded image and two conversions.
_ROW_BYTES = 3 * 8
# The formats Pillow may open an untrusted file as (docs/untrusted-inputs.md). Pillow would
# otherwise try every plugin it has: an EPS file named scan.png makes it run Ghostscript (an
# external PostScript interpreter) on the file, and rarely used decoders are best left unreached.
# (Pillow's JPEG reader also opens MPO, the JPEG with extra frames that phone cameras write.)
FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "GIF", "WEBP")
# A JPEG of more scans is refused (each is a pass over the whole image): see jpeg_scans.
MAX_JPEG_SCANS = jpeg_scans.MAX_JPEG_SCANS
# Pillow lists a TIFF's strips or tiles when it opens the file, before any budget check: 2
# million one-row strips (16 MB of offsets) take 4 s and 650 MB to list. A 16000-row image in
# one-row strips has 16000; tiles of 256 x 256 need far fewer.
MAX_TIFF_BLOCKS = 1 << 16
_STRIP_AND_TILE_TAGS = {273: "StripOffsets", 279: "StripByteCounts", 324: "TileOffsets", 325: "TileByteCounts"}
# Pillow unpacks a numeric tag into a Python object per value when it reads the tag (a RATIONAL
# into one of ~150 bytes): 1 M values of XResolution (8 MB) took 2.2 s and 165 MB. The largest
# real tag, a colour map of 16-bit samples, holds 3 x 65,536. BYTE, ASCII and UNDEFINED stay bytes.
MAX_TIFF_VALUES = 3 << 16
_TIFF_BYTES_TYPES = (1, 2, 7)
# libtiff decodes a tiled TIFF a tile at a time into a buffer of the tile's size, up to 8 bytes a
# pixel (4 samples of 16 bits): a 16 x 16 image in one 32768 x 32768 tile took 1 GB from 151 bytes.
_TILE_BYTES_PER_PIXEL = 8
# Pillow reads a JPEG's header, a PNG's chunks and a GIF's blocks before its first image in Python,
# one at a time (2.6 M empty PNG chunks, 31 MB, took 8.5 s and 330 MB); real files hold dozens.
MAX_HEADER_ITEMS = jpeg_scans.MAX_HEADER_ITEMS
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Pillow decodes a BMP's RLE runs in Python, a run (and, at a row's end, a pixel) at a time: a 9400 x
# 9400 image of empty rows (38 kB) took 10 s. Its pixels plus twice its bytes are held to this.
MAX_BMP_RLE_WORK = 1 << 24
# The stored copy is a JPEG, which holds at most this many pixels a side: an image still longer
# once its shorter side is at most max_size (100000 x 1 pixels) cannot be stored.
MAX_STORED_SIDE = 65_500


class BadImageError(ValueError):
    """A file that cannot be used as an image; the message starts with its path."""


class ImageBudgetError(BadImageError):
    """An image that would take more than the decoded-size budget to decode (``effnet_jax.limits``)."""


def to_gray(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit grayscale ('L')."""
    if im.mode == "L":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # High bit depth: stretch the image's own range to 0..255. A fixed shift would
        # leave 10/12-bit X-rays (stored in 16-bit containers) nearly black.
        arr = np.asarray(im)
        lo, hi = float(arr.min()), float(arr.max())
        step = max(1, BLOCK_PIXELS // max(1, arr.shape[1]))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            # One NaN or inf would blank the whole stretched image, which would then be scored.
            bad = sum(int(np.count_nonzero(~np.isfinite(arr[i : i + step]))) for i in range(0, arr.shape[0], step))
            raise BadImageError(f"{bad} non-finite pixel value(s) (NaN or inf) in a {im.mode} image")
        if not hi > lo:
            raise BadImageError(f"every pixel of this {im.mode} image is {lo:g}: a blank image, nothing to diagnose")
        out = np.empty(arr.shape, np.uint8)
        for start in range(0, arr.shape[0], step):  # float64 copies of a block, not of the whole image
            block = arr[start : start + step].astype(np.float64)
            out[start : start + step] = np.round((block - lo) * (255.0 / (hi - lo))).astype(np.uint8)
        return Image.fromarray(out, mode="L")
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
            raise (ImageBudgetError if isinstance(e, dicom.DicomBudgetError) else BadImageError)(str(e)) from e
    im = load_image(data, path)
    if im.width < 1 or im.height < 1:
        raise BadImageError(f"{path}: empty image ({im.width}x{im.height})")
    # A multi-frame TIFF/GIF/PNG is opened at its first frame, the radiograph; the other frames
    # are never read (counting them, n_frames, would parse every one, damaged or not).
    try:
        return to_gray(im)
    except BadImageError as e:
        raise BadImageError(f"{path}: {e}") from e


def load_image(data: bytes, path: str) -> Image.Image:
    """`data` (an image file, not DICOM) opened with Pillow and decoded whole, every check made first.

    Opened by ``open_image`` (every check before decoding); a file Pillow cannot decode fully
    is a BadImageError naming `path`. Every reader of untrusted image files (``decode_file``,
    the data report's scan) opens them here.
    """
    im = open_image(data, path)
    try:
        im.load()  # full decode: truncated or corrupt data fails here, not later in training
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError...)
        raise pillow_error(e, path) from e
    return im


def open_image(data: bytes, path: str) -> Image.Image:
    """`data` (an image file, not DICOM) opened with Pillow, not yet decoded, every check before decoding made.

    Only ``FORMATS``; a header Pillow would read item by item past ``MAX_HEADER_ITEMS``, a TIFF
    of too many strips, a header over the decoded-size budget, a JPEG of too many scans or a
    BMP of too many RLE runs is refused (ImageBudgetError), a header Pillow cannot read is a
    BadImageError, each naming `path`.
    """
    check_header_items(data, path)
    check_tiff_blocks(data, path)
    try:
        with warnings.catch_warnings():
            # Pillow warns (not raises) on some damaged files; treat those as bad too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
            check_budget(im, path)
            if im.format in ("JPEG", "MPO"):
                check_jpeg_scans(data, path)
            check_bmp_rle(im, data, path)
    except BadImageError:
        raise
    except Exception as e:
        raise pillow_error(e, path) from e
    return im


def pillow_error(e: Exception, path: str) -> BadImageError:
    """Pillow's exception while opening or decoding ``path`` as one line naming it."""
    if isinstance(e, Image.UnidentifiedImageError):
        return BadImageError(f"{path}: not an image (Pillow recognises no image format in it)")
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        # Pillow refuses the header before our budget check sees it: still a size refusal (413 in effnet-serve).
        return ImageBudgetError(f"{path}: refused as a decompression bomb ({e})")
    return BadImageError(f"{path}: corrupt or truncated image ({type(e).__name__}: {e})")


def decode_bytes(mode: str, width: int, height: int) -> int:
    """What decoding an image of this Pillow mode and size, then turning it grey and storing it, takes in bytes."""
    try:  # Pillow's own bytes per pixel: multi-band 8-bit modes take 4
        info = ImageMode.getmode(mode)
        stored = 4 if len(info.bands) > 1 else max(1, np.dtype(info.typestr).itemsize)
    except (KeyError, TypeError, ValueError):
        stored = 4
    pixels = width * height
    block = min(pixels, BLOCK_PIXELS) * 40  # one block's float64 copies in to_gray
    return pixels * (stored + _CONVERSION_BYTES.get(mode, _MAX_CONVERSION_BYTES)) + block + height * _ROW_BYTES


def check_budget(im: Image.Image, path: str) -> None:
    """Refuses (BadImageError naming ``path``) an opened, not yet loaded image whose decoding exceeds the budget."""
    what = f"a {im.format or ''} image of {im.width}x{im.height} pixels in mode {im.mode}".replace("a  ", "an ")
    tile = tiff_tile(im)
    if tile[0]:
        what += f" in tiles of {tile[0]}x{tile[1]}"
    declared = decode_bytes(im.mode, im.width, im.height) + tile[0] * tile[1] * _TILE_BYTES_PER_PIXEL
    limits.check(path, declared, what, ImageBudgetError)


def tiff_tile(im: Image.Image) -> tuple[int, int]:
    """(TileWidth, TileLength) of an opened tiled TIFF libtiff decodes, else (0, 0): a tile at a time, in a buffer."""
    tags = getattr(im, "tag_v2", None) if im.format == "TIFF" else None
    if tags is None or not im.tile or im.tile[0].codec_name != "libtiff":  # Pillow's own decoder clips tiles
        return 0, 0
    try:
        sides = [tags.get(tag) for tag in (322, 323)]  # TileWidth, TileLength
        sides = [int(v[0] if isinstance(v, tuple) else v) for v in sides]
    except (TypeError, ValueError, IndexError):  # absent (a striped TIFF) or unreadable: libtiff decides
        return 0, 0
    return (sides[0], sides[1]) if min(sides) > 0 else (0, 0)


def check_header_items(data: bytes, path: str) -> None:
    """Refuses (ImageBudgetError naming ``path``) a JPEG, PNG or GIF whose header Pillow reads item by item past the limit.

    Counted from the bytes, before Pillow opens the file: a JPEG's segments, fill and stray
    bytes before its first scan, a PNG's chunks, a GIF's
    extension blocks and stray bytes before its first image; at most ``MAX_HEADER_ITEMS``.
    """
    if data[:2] == b"\xff\xd8":
        jpeg_scans.check_header(data, path, ImageBudgetError)
        return
    if data[:8] == _PNG_MAGIC:
        count, what = _png_chunks(data), "PNG of more than {:,} chunks"
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        count, what = _gif_blocks(data), "GIF of more than {:,} blocks or stray bytes before its first image"
    else:
        return
    if count > MAX_HEADER_ITEMS:
        raise ImageBudgetError(
            f"{path}: a {what.format(MAX_HEADER_ITEMS)}, over what is read (Pillow reads each one by one)"
        )


def _png_chunks(data: bytes, stop: int = MAX_HEADER_ITEMS) -> int:
    """A PNG's chunks up to IEND, counted no further than past ``stop`` (an APNG's later frames too)."""
    i, count = 8, 0
    while i + 8 <= len(data) and count <= stop and data[i + 4 : i + 8] != b"IEND":
        count, i = count + 1, i + 12 + int.from_bytes(data[i : i + 4], "big")
    return count


def _gif_blocks(data: bytes, stop: int = MAX_HEADER_ITEMS) -> int:
    """Extension sub-blocks and stray bytes before a GIF's first image, counted no further than past ``stop``."""
    i, count = 13 + (3 << ((data[10] & 7) + 1) if len(data) > 10 and data[10] & 0x80 else 0), 0
    while i < len(data) and count <= stop and data[i] not in b",;":  # the first image, or the end
        if data[i] != 0x21:  # a stray byte: Pillow skips it alone
            count, i = count + 1, i + 1
            continue
        i += 2  # "!" and the label, then sub-blocks until an empty one
        while i < len(data) and count <= stop:
            size, count, i = data[i], count + 1, i + 1 + data[i]
            if not size:
                break
    return count


def check_bmp_rle(im: Image.Image, data: bytes, path: str) -> None:
    """Refuses (ImageBudgetError naming ``path``) an RLE BMP whose pixels plus twice its bytes exceed ``MAX_BMP_RLE_WORK``."""
    if im.format != "BMP" or im.info.get("compression") not in (1, 2):  # BI_RLE8, BI_RLE4
        return
    if im.width * im.height + 2 * len(data) > MAX_BMP_RLE_WORK:
        raise ImageBudgetError(
            f"{path}: an RLE BMP of {im.width}x{im.height} pixels in {len(data):,} bytes, over the "
            f"{MAX_BMP_RLE_WORK:,} pixels plus twice its bytes decoded (Pillow decodes RLE in Python, a run at a time)"
        )


def check_jpeg_scans(data: bytes, path: str) -> None:
    """Refuses (ImageBudgetError naming ``path``) a JPEG of more than ``MAX_JPEG_SCANS`` scans, before decoding."""
    jpeg_scans.check_scans(data, path, ImageBudgetError)


def check_tiff_blocks(data: bytes, path: str) -> None:
    """Refuses (ImageBudgetError naming ``path``) a TIFF whose first page lists over ``MAX_TIFF_BLOCKS`` strips or tiles.

    Or a numeric tag of more than ``MAX_TIFF_VALUES`` values. Read from the first image file
    directory before Pillow opens the file (it lists them all on opening); a file that is not
    a TIFF, or whose directory cannot be read, is left to Pillow.
    """
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 16:
        return
    version = struct.unpack(order + "H", data[2:4])[0]
    if version == 42:  # classic TIFF: 2-byte entry count, 12-byte entries with a 4-byte count
        offset, head, entry, count_format = struct.unpack(order + "I", data[4:8])[0], "H", 12, "I"
    elif version == 43:  # BigTIFF: 8-byte entry count, 20-byte entries with an 8-byte count
        offset, head, entry, count_format = struct.unpack(order + "Q", data[8:16])[0], "Q", 20, "Q"
    else:
        return
    start = offset + struct.calcsize(head)
    if start > len(data):
        return
    entries = struct.unpack(order + head, data[offset:start])[0]
    for i in range(min(entries, (len(data) - start) // entry)):
        at = start + i * entry
        tag, kind = struct.unpack(order + "HH", data[at : at + 4])
        count = struct.unpack(order + count_format, data[at + 4 : at + 4 + struct.calcsize(count_format)])[0]
        if tag in _STRIP_AND_TILE_TAGS and count > MAX_TIFF_BLOCKS:
            raise ImageBudgetError(
                f"{path}: a TIFF page of {count:,} {_STRIP_AND_TILE_TAGS[tag]}, over the {MAX_TIFF_BLOCKS:,} read "
                "(each strip or tile is listed before decoding)"
            )
        if kind not in _TIFF_BYTES_TYPES and count > MAX_TIFF_VALUES:
            raise ImageBudgetError(
                f"{path}: a TIFF tag {tag} of {count:,} values, over the {MAX_TIFF_VALUES:,} read (Pillow unpacks "
                "each into a Python object)"
            )


def load_for_storage(data: bytes, path: str, max_size: int) -> tuple[bytes, tuple[int, int]]:
    """Decode `data` (the bytes of file `path`), normalise it, and re-encode it for storage.

    Returns (encoded JPEG bytes, (height, width)). Raises BadImageError naming `path`.
    """
    return store_gray(decode_file(data, path), max_size, data, path)


def store_gray(
    gray: Image.Image, max_size: int, original: bytes | None = None, name: str = "image"
) -> tuple[bytes, tuple[int, int]]:
    """The stored copy of an 8-bit grayscale image: (JPEG bytes, (height, width)), shorter side <= max_size.

    `original` is the file `gray` was decoded from: an 8-bit grey JPEG that needs no
    resize is kept as it is (to_gray returns the opened file itself, format kept). An image
    still longer than ``MAX_STORED_SIDE`` once resized is a BadImageError naming ``name``.
    """
    resized = resize_shorter(gray, max_size)
    if max(resized.size) > MAX_STORED_SIDE:
        raise BadImageError(
            f"{name}: an image of {gray.width}x{gray.height} pixels ({resized.width}x{resized.height} with its shorter "
            f"side at most {max_size}), longer than the {MAX_STORED_SIDE:,} pixels a side a stored JPEG holds"
        )
    if original is not None and gray.format == "JPEG" and resized is gray:
        return original, (gray.height, gray.width)  # already what we store: no re-compression
    out = io.BytesIO()
    # comment=b"": Pillow would copy the input's own (a GIF or PNG comment of any length) into the JPEG.
    resized.save(out, format="JPEG", quality=JPEG_QUALITY, comment=b"")
    return out.getvalue(), (resized.height, resized.width)
