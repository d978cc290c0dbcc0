"""DICOM radiographs -> 8-bit grayscale, as a reader of the display would show them.

The steps follow DICOM PS3.3 C.11: the modality LUT (rescale slope/intercept or a
Modality LUT Sequence), then the first VOI transform (window centre/width, or a VOI
LUT Sequence), then MONOCHROME1 (white = low values) is inverted so that bone is
bright as in MONOCHROME2. The VOI output range is stretched to 0..255; without a VOI
the image's own range is (as ``imaging.to_gray`` does for 16-bit files). pydicom
does the decoding and the LUTs (the ``dicom`` extra); a compressed transfer syntax
that no installed decoder handles is refused with one line naming the file. Explicit VR
Big Endian files are read as their little-endian twins; a file whose TransferSyntaxUID
states the other byte order than its dataset's is refused as mislabelled.

A DICOM file may come from anyone: before any pixel is decoded, what decoding will take
(the first frame at its declared size and bit depth, a decoder's working copies, the
deflated dataset once inflated) is held to the decoded-size budget (``effnet_jax.limits``),
and a compressed frame's own header must agree with Rows and Columns. The modality and VOI
steps run a block of rows at a time, so their float64 intermediates stay bounded.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib

import numpy as np

from effnet_jax import limits
from effnet_jax.data import jpeg_scans

# 128-byte preamble, then the magic: how a DICOM Part 10 file announces itself.
_MAGIC_OFFSET, _MAGIC = 128, b"DICM"
# As large as Pillow accepts before calling an image a decompression bomb (about 179 M pixels).
MAX_PIXELS = 2 * 89_478_485
# The modality and VOI steps (pydicom's float64 copies, then ours) run on blocks of about this
# many pixels, so their intermediates take a bounded amount of memory whatever the image size.
BLOCK_PIXELS = 1 << 18
# Bytes per pixel of one block's intermediates at their peak: the modality output, the window's
# own copy, its masks and temporaries, then the scaling to 0..255.
BLOCK_BYTES_PER_PIXEL = 80
# A PackBits (RLE) replicate run turns 2 bytes into up to 128.
_RLE_MAX_EXPANSION = 64
# pydicom parses in Python, building an object per element and per sequence item: 1.2 M empty items
# (9.4 MB) took 18 s and 800 MB. A dataset may take at most MAX_READS reads of its bytes (one to
# three an element: 921,600 empty elements took 921,648 reads and 6 s) and hold at most MAX_ITEMS
# items and pixel data fragments (counted as their (FFFE,E000) tags, little or big endian, before
# pydicom reads anything).
MAX_READS = 1 << 18
MAX_ITEMS = 1 << 16
_ITEM_TAGS = (b"\xfe\xff\x00\xe0", b"\xff\xfe\xe0\x00")
# The (7FE0,0010) Pixel Data tag as it is written in each byte order.
_PIXEL_DATA_TAGS = {"little-endian": b"\xe0\x7f\x10\x00", "big-endian": b"\x7f\xe0\x00\x10"}
# The LUT sequences the modality and VOI steps parse when they read them: a LUT holds at most
# 65,536 16-bit entries, so a few fit in this many bytes.
MAX_LUT_SEQUENCE_BYTES = 1 << 20
# OpenJPEG builds a few kB of state per tile and component before it decodes (65,025 tiles of 8 x
# 8 pixels, 4.6 MB, took 780 MB): a JPEG 2000 frame may declare at most this many.
MAX_J2K_TILES = 1 << 14


class DicomError(ValueError):
    """A DICOM file that cannot be used as a radiograph; the message names the file."""


class DicomBudgetError(DicomError):
    """A DICOM file that would take more than the decoded-size budget to read (``effnet_jax.limits``)."""


class _ReadLimit(Exception):
    """A read past ``MAX_READS`` (not an EOFError: pydicom would take that for the end of the data)."""


class _CountedReads(io.BytesIO):
    """The bytes pydicom parses, failing a read past ``MAX_READS`` (pydicom rewraps some errors: see ``exceeded``)."""

    def __init__(self, data):
        super().__init__(data)
        self.reads = 0

    @property
    def exceeded(self) -> bool:
        return self.reads > MAX_READS

    def read(self, size=-1):
        self.reads += 1
        if self.exceeded:
            raise _ReadLimit(f"more than {MAX_READS:,} reads")
        return super().read(size)


def _check_items(data: bytes, path: str) -> None:
    """Refuses a dataset of more than ``MAX_ITEMS`` sequence items and fragments, before pydicom reads it."""
    items = sum(data.count(tag) for tag in _ITEM_TAGS)
    if items > MAX_ITEMS:
        raise DicomBudgetError(
            f"{path}: a DICOM dataset of {items:,} sequence items or pixel data fragments, over the {MAX_ITEMS:,} "
            "parsed (pydicom builds an object for each)"
        )


def _parsed(data: bytes, path: str, parse, reader: _CountedReads | None = None):
    """``parse(reader)`` on ``data``, its reads held to ``MAX_READS``; any failure one line naming ``path``."""
    reader = _CountedReads(data) if reader is None else reader
    try:
        parsed = parse(reader)
    except Exception as e:  # pydicom raises InvalidDicomError, EOFError, struct/value errors...
        if not reader.exceeded:
            why = "sequences nested too deeply" if _from_recursion(e) else f"{type(e).__name__}: {e}"
            raise DicomError(f"{path}: not a readable DICOM file ({why})") from e
    if reader.exceeded:  # also when pydicom kept what it had read so far
        raise DicomBudgetError(
            f"{path}: a DICOM dataset of more elements than {MAX_READS:,} reads parse (pydicom builds an object for "
            "each)"
        )
    return parsed


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
    decoders = logging.getLogger("pydicom.pixels.decoders.base")
    if _drop_tracebacks not in decoders.filters:
        decoders.addFilter(_drop_tracebacks)
    return pydicom


def _drop_tracebacks(record: logging.LogRecord) -> bool:
    """False for a record carrying a traceback: pydicom logs a decoder's failure with one, which
    ``read_gray`` then reports in one line naming the file."""
    return not record.exc_info


def read_gray(data: bytes, path: str) -> np.ndarray:
    """The first frame of the DICOM file ``data`` (read from ``path``) as a ``(H, W)`` uint8 image."""
    pydicom = _pydicom()
    try:
        limit = limits.budget()
    except limits.BudgetError as e:
        raise DicomError(f"{path}: {e}") from None
    ds, inflated = _read_dataset(pydicom, data, path, limit)
    _check_lut_sequences(pydicom, ds, path)
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if "PixelData" not in ds:
        floats = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        if floats:  # a parametric map, not a radiograph
            raise DicomError(f"{path}: DICOM {floats[0]} (floating-point pixels) is not a radiograph's pixel data")
        _check_byte_order(syntax, data, path)
        raise DicomError(f"{path}: DICOM file without pixel data (a report or structured document?)")
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as e:
        raise DicomError(f"{path}: bad DICOM image size tags ({type(e).__name__}: {e})") from e
    if rows < 1 or cols < 1 or samples < 1 or frames < 1 or rows * cols * samples > MAX_PIXELS:
        raise DicomError(f"{path}: DICOM image of {rows}x{cols}x{samples} pixels (expected 1 to {MAX_PIXELS})")
    if not 1 <= bits <= 64:
        raise DicomError(f"{path}: DICOM BitsAllocated {bits} (expected 1 to 64)")
    if syntax is not None and not syntax.is_transfer_syntax:  # a private or made-up UID: no decoder knows it
        raise DicomError(
            f"{path}: DICOM TransferSyntaxUID {str(syntax)[:64]!r} is not a transfer syntax known here; convert the "
            "file to a standard syntax"
        )
    compressed = syntax is not None and syntax.is_compressed
    declared = 2 * inflated + decode_bytes(rows, cols, samples, bits, compressed)
    what = f"a DICOM frame of {rows}x{cols}x{samples} samples at {bits} bits" + (
        f" in a deflated dataset of {inflated:,} bytes" if inflated else ""
    )
    limits.check(path, declared, what, DicomBudgetError, limit)
    if compressed:
        _check_compressed_frame(pydicom, ds, syntax, rows, cols, samples, frames, path, limit - declared)
    try:
        # Only the first frame: a multi-frame file may decode to far more than it stores. Pixel data
        # longer than its declared frames is not read as more frames (pydicom warns of the extra bytes).
        pixels = pydicom.pixels.pixel_array(ds, index=0, allow_excess_frames=False)
    except Exception as e:
        if compressed:  # a decoder for it is installed (_check_compressed_frame): the frame itself is damaged
            why = str(e).split("\n", 2)[1].strip() if str(e).count("\n") else f"{type(e).__name__}: {e}"
            raise DicomError(f"{path}: cannot decode the first compressed DICOM frame ({syntax.name}): {why}") from e
        raise DicomError(f"{path}: cannot decode DICOM pixel data ({type(e).__name__}: {e})") from e
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if pixels.ndim == 3 and pixels.shape[-1] == 3 and pixels.dtype == np.uint8:
            # 8-bit colour (a secondary capture): luma, as Pillow converts RGB files.
            from PIL import Image

            return np.asarray(Image.fromarray(pixels, mode="RGB").convert("L"))
        raise DicomError(f"{path}: DICOM PhotometricInterpretation {photometric!r} is not a grayscale radiograph")
    try:
        # An overflow to inf, or inf - inf, is refused by name below: numpy's bare warning would add nothing.
        with np.errstate(over="ignore", invalid="ignore"):
            gray = _windowed_uint8(pydicom, ds, pixels, photometric, path)
    except DicomError:
        raise
    except Exception as e:  # malformed LUT descriptors or window values
        raise DicomError(f"{path}: bad DICOM modality/VOI LUT ({type(e).__name__}: {e})") from e
    if gray.min() == gray.max():
        raise DicomError(
            f"{path}: every pixel is {int(gray.min())} after the DICOM rescale and window: a blank image, "
            "nothing to diagnose (check RescaleSlope, WindowCenter and WindowWidth)"
        )
    return gray


def _check_byte_order(syntax, data: bytes, path: str) -> None:
    """Refuses a dataset read without pixel data whose Pixel Data tag is there in the other byte order.

    Its TransferSyntaxUID is wrong (a little-endian dataset labelled Explicit VR Big Endian, or
    the reverse): read in the declared order, every tag after the first came out garbled.
    """
    if syntax is None or not syntax.is_transfer_syntax:
        return
    declared = "little-endian" if syntax.is_little_endian else "big-endian"
    other = "big-endian" if syntax.is_little_endian else "little-endian"
    if _PIXEL_DATA_TAGS[other] in data and _PIXEL_DATA_TAGS[declared] not in data:
        raise DicomError(
            f"{path}: DICOM file declaring the transfer syntax {syntax.name} ({syntax}), {declared}, whose pixel "
            f"data is tagged {other}: a mislabelled file; correct its TransferSyntaxUID"
        )


def decode_bytes(rows: int, cols: int, samples: int, bits: int, compressed: bool) -> int:
    """What ``read_gray`` takes to turn one frame of this size into 8-bit grey, in bytes.

    The decoded frame and the decoder's working copy (a third for compressed syntaxes),
    colour conversion, one block of the modality/VOI steps, and the uint8 result.
    """
    pixels = rows * cols
    frame = pixels * samples * max(1, (bits + 7) // 8)
    colour = pixels * samples * 8 if samples > 1 else 0  # YBR -> RGB runs in floating point
    block = min(pixels, max(cols, BLOCK_PIXELS)) * BLOCK_BYTES_PER_PIXEL
    return (3 if compressed else 2) * frame + colour + block + pixels


def _read_dataset(pydicom, data: bytes, path: str, limit: int):
    """The parsed dataset and, for the Deflated transfer syntax, the size it inflated to (else 0).

    pydicom inflates a deflated dataset whole before reading it; here the file meta is read
    first, and a deflated rest is inflated by at most the budget.
    """
    _check_items(data, path)
    fp = _CountedReads(data)

    def past_meta(tag, vr, length) -> bool:
        return tag.group != 2

    def read_meta(fp):
        preamble = pydicom.filereader.read_preamble(fp, False)
        return preamble, pydicom.filereader.read_dataset(
            fp, is_implicit_VR=False, is_little_endian=True, stop_when=past_meta
        )

    preamble, meta = _parsed(data, path, read_meta, fp)
    if meta.get("TransferSyntaxUID") != pydicom.uid.DeflatedExplicitVRLittleEndian:
        return _parsed(data, path, pydicom.dcmread), 0
    start = fp.tell()
    try:
        # A few MB of zeros inflate to GBs: count first, a MiB at a time, stopping past the budget;
        # then inflate into one buffer of the counted size.
        size = _inflated_size(memoryview(data)[start:], limit // 2 + 1)
        if 2 * size > limit:  # the count stopped there
            raise DicomBudgetError(
                f"{path}: the deflated DICOM dataset inflates to more than {limit // 2:,} bytes, which with its parsed "
                f"copy is over the decoded-size budget of {limit:,} bytes (set {limits.ENV_VAR} to change it)"
            )
        inflated = zlib.decompress(memoryview(data)[start:], -zlib.MAX_WBITS, max(size, 1))
    except zlib.error as e:
        raise DicomError(f"{path}: not a readable DICOM file (bad deflated dataset: {e})") from e

    def parse(reader):
        body = pydicom.filereader.read_dataset(reader, is_implicit_VR=False, is_little_endian=True)
        file_meta = pydicom.dataset.FileMetaDataset(meta)
        return pydicom.dataset.FileDataset(path, body, preamble=preamble, file_meta=file_meta, is_implicit_VR=False)

    _check_items(inflated, path)
    return _parsed(inflated, path, parse), len(inflated)


def _from_recursion(e: BaseException | None) -> bool:
    """Whether ``e`` is or was raised while handling a RecursionError (pydicom rewraps one as an OSError)."""
    while e is not None:
        if isinstance(e, RecursionError):
            return True
        e = e.__context__
    return False


def _check_lut_sequences(pydicom, ds, path: str) -> None:
    """Refuses a modality or VOI LUT sequence over ``MAX_LUT_SEQUENCE_BYTES``: pydicom parses it when it is read."""
    for keyword in ("ModalityLUTSequence", "VOILUTSequence"):
        element = ds.get_item(pydicom.datadict.tag_for_keyword(keyword))
        value = getattr(element, "value", None)
        if isinstance(value, (bytes, bytearray)) and len(value) > MAX_LUT_SEQUENCE_BYTES:
            raise DicomBudgetError(
                f"{path}: a DICOM {keyword} of {len(value):,} bytes, over the {MAX_LUT_SEQUENCE_BYTES:,} parsed "
                "(pydicom builds an object for each of its elements)"
            )


def _inflated_size(stream: memoryview, stop: int) -> int:
    """How many bytes the raw deflate ``stream`` inflates to, counting no further than ``stop``."""
    inflater, total, tail = zlib.decompressobj(-zlib.MAX_WBITS), 0, stream
    while not inflater.eof and total < stop:
        chunk = inflater.decompress(tail, 1 << 20)
        total += len(chunk)
        tail = inflater.unconsumed_tail
        if not chunk and not tail:
            break
    return total


def _undecodable(syntax, path: str, e: Exception | None) -> DicomError:
    cause = f" ({type(e).__name__})" if e is not None else ""
    return DicomError(
        f"{path}: DICOM transfer syntax {syntax.name} ({syntax}) is compressed and cannot be decoded here{cause}; "
        "convert it to an uncompressed syntax, or install a pydicom decoder plugin for it"
    )


def _check_compressed_frame(pydicom, ds, syntax, rows, cols, samples, frames, path, headroom: int) -> None:
    """Refuses a first frame whose own header disagrees with Rows x Columns, before it is decoded.

    A decoder sizes its output from the codestream, not from the DICOM tags, so a JPEG frame
    may declare far more pixels than the tags; an RLE segment may inflate past its plane.
    """
    try:
        decoder = pydicom.pixels.get_decoder(syntax)
        available = decoder.is_available
    except Exception:  # no decoder registered for this syntax at all
        available = False
    if not available:
        raise _undecodable(syntax, path, None)
    try:
        frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=frames))
    except Exception as e:
        raise DicomError(f"{path}: cannot read the first compressed DICOM frame ({type(e).__name__}: {e})") from e
    if syntax == pydicom.uid.RLELossless:
        _check_rle_frame(frame, rows * cols, samples, path, headroom)
        return
    from PIL import Image

    if frame[:2] == b"\xff\xd8":  # Pillow reads a JPEG's header a segment at a time, in Python
        jpeg_scans.check_header(frame, path, DicomBudgetError, "a DICOM JPEG frame")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(frame)) as im:  # reads the codestream's header, decodes nothing
                size, is_jpeg = im.size, im.format in ("JPEG", "MPO")
    except Exception as e:
        raise DicomError(
            f"{path}: cannot read the size of the first compressed DICOM frame ({syntax.name}) to check it "
            f"before decoding ({type(e).__name__})"
        ) from e
    if size != (cols, rows):
        raise DicomError(
            f"{path}: the first compressed DICOM frame declares {size[0]}x{size[1]} pixels, the file's Columns x "
            f"Rows say {cols}x{rows}"
        )
    if is_jpeg:  # a decoder passes over the whole frame once per scan, as for a JPEG file
        jpeg_scans.check_scans(frame, path, DicomBudgetError, "a DICOM JPEG frame")
    tiles = _j2k_tiles(frame)
    if tiles > MAX_J2K_TILES:
        raise DicomBudgetError(
            f"{path}: a DICOM JPEG 2000 frame of {tiles:,} tiles x components, over the {MAX_J2K_TILES:,} decoded "
            "(OpenJPEG builds state for each before decoding)"
        )


def _j2k_tiles(frame: bytes) -> int:
    """Tiles x components a JPEG 2000 codestream's SIZ segment declares; 0 where it has none."""
    at = frame.find(b"\xff\x4f\xff\x51")  # SOC, then SIZ: Lsiz, Rsiz, then the sizes below
    if at < 0 or len(frame) < at + 42:
        return 0
    width, height, _, _, tile_w, tile_h, tile_x, tile_y, components = struct.unpack(">8IH", frame[at + 8 : at + 42])
    if tile_w < 1 or tile_h < 1:
        return 0  # OpenJPEG refuses it itself
    across = -(-max(0, width - tile_x) // tile_w)
    down = -(-max(0, height - tile_y) // tile_h)
    return across * down * components


def _check_rle_frame(frame: bytes, plane: int, samples: int, path: str, headroom: int) -> None:
    """Refuses an RLE frame whose segments decode past one plane each (pydicom decodes a segment whole)."""
    if len(frame) < 64:
        return  # pydicom refuses a frame without its RLE header
    count, *offsets = np.frombuffer(frame[:64], "<u4").tolist()
    bounds = sorted(o for o in offsets[: min(count, 15)] if 64 <= o <= len(frame)) + [len(frame)]
    segments = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
    if _RLE_MAX_EXPANSION * max((b - a for a, b in segments), default=0) <= headroom:
        return  # no segment can decode past what the budget still allows
    for a, b in segments:
        length = _packbits_length(frame, a, b, plane + 1)
        if length > plane + 1:
            raise DicomError(
                f"{path}: an RLE segment of the first DICOM frame decodes to more than the {plane:,} bytes of a "
                "plane (its runs do not fit the image size)"
            )


def _packbits_length(src: bytes, start: int, end: int, stop: int) -> int:
    """How many bytes the PackBits runs in ``src[start:end]`` decode to, counting no further than ``stop``."""
    n, pos = 0, start
    while pos < end and n <= stop:
        header = src[pos]
        if header > 128:  # replicate the next byte 257 - header times
            n += 257 - header
            pos += 2
        elif header < 128:  # copy the next header + 1 bytes
            n += header + 1
            pos += header + 2
        else:
            pos += 1
    return n


def _windowed_uint8(pydicom, ds, pixels: np.ndarray, photometric: str, path: str) -> np.ndarray:
    """Modality LUT, first VOI transform, MONOCHROME1 inversion and 0..255 scaling, a block of rows at a time.

    Each step maps pixels one by one, so blocks give the very result of the whole image;
    without a VOI range, a first pass finds the image's own range. A NaN or infinite value
    (from a NaN RescaleSlope, WindowCenter, ...) is refused: it would blank the image.
    """
    step = max(1, BLOCK_PIXELS // max(1, pixels[0].size))
    starts = range(0, pixels.shape[0], step)
    low, high = _voi_range(pydicom, ds)
    has_voi = low is not None
    if has_voi and not (np.isfinite(low) and np.isfinite(high)):
        raise DicomError(
            f"{path}: the DICOM window (WindowCenter / WindowWidth or VOI LUT) gives a non-finite range "
            f"[{low}, {high}]; refusing an image it would blank"
        )

    def values(start: int) -> np.ndarray:
        block = np.asarray(pydicom.pixels.apply_modality_lut(pixels[start : start + step], ds), np.float64)
        if has_voi:
            block = np.asarray(pydicom.pixels.apply_voi_lut(block, ds, index=0), np.float64)
        if not np.isfinite(block).all():
            raise DicomError(
                f"{path}: non-finite pixel value(s) after the DICOM rescale / window (a NaN or infinite "
                "RescaleSlope, RescaleIntercept, WindowCenter or WindowWidth?)"
            )
        return block

    if low is None or not high > low:
        ranges = np.array([(b.min(), b.max()) for b in map(values, starts)], np.float64)
        low, high = float(np.min(ranges[:, 0])), float(np.max(ranges[:, 1]))  # NaN spreads as in a whole-image min
    out = np.empty(pixels.shape[:2], np.uint8)
    for start in starts:
        block = values(start)
        if photometric == "MONOCHROME1":
            block = (low + high) - block  # exact for integer-valued data: the twin of a MONOCHROME2 image
        out[start : start + step] = _to_uint8(block, low, high)
    return out


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
