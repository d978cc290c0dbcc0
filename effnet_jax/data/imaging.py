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

What a library warns while it reads one file is logged once, after that file's name
(``named_warnings``): among thousands of files, a bare "Corrupt EXIF data" names none.
"""

import contextlib
import functools
import io
import logging
import struct
import threading
import warnings

import numpy as np
from PIL import Image, ImageMode, TiffImagePlugin

from effnet_jax import limits
from effnet_jax.data import dicom, jpeg_scans
from effnet_jax.output_files import printable_line

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
# A JPEG's metadata segments and Photoshop resource blocks are bounded in jpeg_scans.
MAX_JPEG_APP_BYTES = jpeg_scans.MAX_JPEG_APP_BYTES
MAX_PHOTOSHOP_RESOURCES = jpeg_scans.MAX_PHOTOSHOP_RESOURCES
# JPEG frames other than Huffman-coded baseline, extended and progressive DCT (SOF0-2), by marker.
# libjpeg decodes no hierarchical frame; lossless and arithmetic coding depend on its build.
_JPEG_CODINGS = {
    0xC3: "lossless",
    0xC5: "hierarchical",
    0xC6: "hierarchical progressive",
    0xC7: "hierarchical lossless",
    0xC9: "arithmetic-coded",
    0xCA: "arithmetic-coded progressive",
    0xCB: "arithmetic-coded lossless",
    0xCD: "arithmetic-coded hierarchical",
    0xCE: "arithmetic-coded hierarchical progressive",
    0xCF: "arithmetic-coded hierarchical lossless",
}
# A TIFF's SampleFormat values (TIFF 6.0 and Adobe's supplement), to name what Pillow cannot read.
_TIFF_SAMPLE_FORMATS = {
    1: "unsigned integer",
    2: "signed integer",
    3: "floating-point",
    4: "untyped",
    5: "complex integer",
    6: "complex floating-point",
}
_TIFF_SHORT_OR_LONG = {3: "H", 4: "I"}
# The stored copy is a JPEG, which holds at most this many pixels a side: an image still longer
# once its shorter side is at most max_size (100000 x 1 pixels) cannot be stored.
MAX_STORED_SIDE = 65_500


class BadImageError(ValueError):
    """A file that cannot be used as an image; the message starts with its path."""


class ImageBudgetError(BadImageError):
    """An image that would take more than the decoded-size budget to decode (``effnet_jax.limits``)."""


# --- Warnings named by their file ------------------------------------------------------------------
# ``warnings.catch_warnings`` swaps process-wide state, and effnet-serve decodes uploads on several
# threads: one catch stays open while any thread reads a file, and each warning goes to the file of
# the thread that raised it (a thread reading no file warns as before). Opening it resets the
# "warned once already" memory, so each file read alone gets its own warnings.
log = logging.getLogger("effnet_jax.data")
# pydicom logs what it also warns (and some things it only logs), on these loggers.
_PYDICOM_LOGGERS = ("pydicom", "pydicom.pixels.decoders.base", "pydicom.pixels.utils")


class _WarningRouter:
    """Routes the warnings and pydicom log records of a thread reading a file to that file's list."""

    def __init__(self):
        self._lock = threading.Lock()
        self._readers = 0
        self._catch = None  # held while any thread reads a file
        self._show_before = warnings.showwarning
        self._local = threading.local()

    def caught(self) -> list | None:
        """The list of the file this thread is reading, or None."""
        return getattr(self._local, "caught", None)

    @contextlib.contextmanager
    def collect(self, path):
        """Collects while the body reads ``path``, then logs each distinct message once, after ``path``."""
        if self.caught() is not None:  # a reader inside another (decode_file, then load_image): the outer logs
            yield
            return
        self._local.caught = caught = []
        self._open()
        try:
            yield
        finally:
            self._close()
            self._local.caught = None
            for message in dict.fromkeys(caught):  # both from the file: an escape code stays text
                log.warning("%s: %s", printable_line(str(path)), printable_line(message))

    def _open(self):
        with self._lock:
            if not self._readers:
                self._catch = warnings.catch_warnings()
                self._catch.__enter__()
                # In force for every reader while any reads: a reader's own catch_warnings, left
                # on another thread, restores the filters as they were when it entered.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                if warnings.showwarning is not self._show:  # ours where another catch restored it
                    self._show_before = warnings.showwarning
                warnings.showwarning = self._show
                for name in _PYDICOM_LOGGERS:
                    if self._record not in logging.getLogger(name).filters:
                        logging.getLogger(name).addFilter(self._record)
            self._readers += 1

    def _close(self):
        with self._lock:
            self._readers -= 1
            if not self._readers:
                self._catch.__exit__(None, None, None)

    def _show(self, message, category, filename, lineno, file=None, line=None):
        caught = self.caught()
        if caught is None:
            self._show_before(message, category, filename, lineno, file, line)
        else:
            caught.append(str(message))

    def _record(self, record: logging.LogRecord) -> bool:
        """A logging filter: a pydicom record of a thread reading a file joins that file's list instead."""
        caught = self.caught()
        # A decoder's traceback (dicom._drop_tracebacks) and debug lines are left to their logger.
        if caught is None or record.exc_info or record.levelno < logging.WARNING:
            return True
        caught.append(record.getMessage())
        return False


_ROUTER = _WarningRouter()


def named_warnings(read):
    """``read(data, path, ...)``, its warnings (Pillow's, pydicom's, numpy's) logged once each after ``path``."""

    @functools.wraps(read)
    def reading(data, path, *args, **kwargs):
        with _ROUTER.collect(path):
            return read(data, path, *args, **kwargs)

    return reading


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


@named_warnings
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


@named_warnings
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
        raise pillow_error(e, path, data) from e
    return im


@named_warnings
def open_image(data: bytes, path: str) -> Image.Image:
    """`data` (an image file, not DICOM) opened with Pillow, not yet decoded, every check before decoding made.

    Only ``FORMATS``; a header Pillow would read item by item past ``MAX_HEADER_ITEMS``, a JPEG
    of too much metadata, a TIFF of too many strips, a header over the decoded-size budget, a JPEG
    of too many scans or a BMP of too many RLE runs is refused (ImageBudgetError), a header Pillow
    cannot read is a BadImageError, each naming `path`.
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
        raise pillow_error(e, path, data) from e
    return im


def pillow_error(e: Exception, path: str, data: bytes = b"") -> BadImageError:
    """Pillow's exception while opening or decoding ``path`` (its bytes ``data``, where known) as one line naming it."""
    if isinstance(e, Image.UnidentifiedImageError):
        return _unread_tiff(data, path) or BadImageError(
            f"{path}: not an image (Pillow recognises no image format in it)"
        )
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        # Pillow refuses the header before our budget check sees it: still a size refusal (413 in effnet-serve).
        return ImageBudgetError(f"{path}: refused as a decompression bomb ({e})")
    why = f"{type(e).__name__}: {e}"
    marker = jpeg_scans.frame_marker(data)
    coding = _JPEG_CODINGS.get(marker)
    if coding is not None:
        article = "an" if coding[0] in "aeiou" else "a"
        if "hierarchical" in coding:
            return BadImageError(
                f"{path}: {article} {coding} JPEG (SOF{marker - 0xC0}), which libjpeg does not decode ({why}); save it as "
                "a baseline JPEG"
            )
        return BadImageError(
            f"{path}: {article} {coding} JPEG (SOF{marker - 0xC0}) that did not decode ({why}): damaged, or a coding this "
            "build of libjpeg does not decode; save it as a baseline JPEG"
        )
    return BadImageError(f"{path}: corrupt or truncated image ({why})")


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


def _tiff_directory(data: bytes):
    """``(byte order, BigTIFF?, entries)`` of a TIFF's first image file directory, None where it is not readable.

    Each entry is ``(tag, type, count, value field)``, as many as the data holds.
    """
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 16:
        return None
    version = struct.unpack(order + "H", data[2:4])[0]
    if version == 42:  # classic TIFF: 2-byte entry count, 12-byte entries with a 4-byte count
        offset, head, entry, count_format = struct.unpack(order + "I", data[4:8])[0], "H", 12, "I"
    elif version == 43:  # BigTIFF: 8-byte entry count, 20-byte entries with an 8-byte count
        offset, head, entry, count_format = struct.unpack(order + "Q", data[8:16])[0], "Q", 20, "Q"
    else:
        return None
    start = offset + struct.calcsize(head)
    if start > len(data):
        return None
    count_end = 4 + struct.calcsize(count_format)
    entries = []
    for i in range(min(struct.unpack(order + head, data[offset:start])[0], (len(data) - start) // entry)):
        at = start + i * entry
        tag, kind = struct.unpack(order + "HH", data[at : at + 4])
        count = struct.unpack(order + count_format, data[at + 4 : at + count_end])[0]
        entries.append((tag, kind, count, data[at + count_end : at + entry]))
    return order, version == 43, entries


def check_tiff_blocks(data: bytes, path: str) -> None:
    """Refuses (ImageBudgetError naming ``path``) a TIFF whose first page lists over ``MAX_TIFF_BLOCKS`` strips or tiles.

    Or a numeric tag of more than ``MAX_TIFF_VALUES`` values. Read from the first image file
    directory before Pillow opens the file (it lists them all on opening); a file that is not
    a TIFF, or whose directory cannot be read, is left to Pillow.
    """
    directory = _tiff_directory(data)
    for tag, kind, count, _ in directory[2] if directory else ():
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


def _tiff_first_values(data: bytes) -> dict[int, int]:
    """The first value of each SHORT or LONG tag of a TIFF's first page, by tag (inline or at its offset)."""
    directory = _tiff_directory(data)
    if directory is None:
        return {}
    order, big, values = directory[0], directory[1], {}
    for tag, kind, count, field in directory[2]:
        if kind not in _TIFF_SHORT_OR_LONG or count < 1:
            continue
        size = struct.calcsize(_TIFF_SHORT_OR_LONG[kind])
        at = 0
        if count * size > len(field):  # stored elsewhere: the field holds its offset
            at = struct.unpack(order + ("Q" if big else "I"), field)[0]
            field = data
        if at + size <= len(field):
            values[tag] = struct.unpack_from(order + _TIFF_SHORT_OR_LONG[kind], field, at)[0]
    return values


def _unread_tiff(data: bytes, path: str) -> BadImageError | None:
    """Why Pillow recognised no image in TIFF ``data``, where its first page shows it: its samples or compression."""
    values = _tiff_first_values(data)
    if 258 not in values:  # BitsPerSample: not a TIFF page Pillow would try
        return None
    bits, sample_format = values[258], values.get(339, 1)  # SampleFormat: unsigned integers unless stated
    if not any(key[2][:1] == (sample_format,) and key[4][:1] == (bits,) for key in TiffImagePlugin.OPEN_INFO):
        kind = _TIFF_SAMPLE_FORMATS.get(sample_format, f"SampleFormat {sample_format}")
        return BadImageError(
            f"{path}: a TIFF of {bits}-bit {kind} samples (BitsPerSample {bits}, SampleFormat {sample_format}), "
            "which Pillow does not read; save it as 8- or 16-bit integers or 32-bit floats"
        )
    compression = values.get(259, 1)
    if compression not in TiffImagePlugin.COMPRESSION_INFO:
        return BadImageError(
            f"{path}: a TIFF of compression {compression}, which Pillow does not read; save it uncompressed or with "
            "LZW, Deflate or JPEG compression"
        )
    return None


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
