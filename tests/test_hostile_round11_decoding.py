"""Hostile inputs, round 11: the work a small image or DICOM file makes its decoder do.

Each case failed before the fix it names (seconds of CPU or a GB from a file of kB, a
``ValueError`` traceback, a DICOM unreadable or a 16-bit PNG white in an external folder) and
is asserted here as the documented behaviour (docs/untrusted-inputs.md): a refusal naming the
file, made before Pillow or pydicom does the work. Files are built small; nothing is timed.
"""

import io
import struct
import zlib

import numpy as np
import pydicom
import pytest
from dicom_fixtures import radiograph, write_dicom
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

from effnet_jax import limits
from effnet_jax.data import dicom, external, imaging, jpeg_scans, transforms
from effnet_jax.server import uploads

MANY = imaging.MAX_HEADER_ITEMS + 10


def _jpeg(mode="L", size=(64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, 128).save(out, "JPEG")
    return out.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width=64, height=64, pre=b"", post=b"", depth=8, header_only=False) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    rows = b"" if header_only else (b"\0" + b"\0" * (width * depth // 8)) * height
    idat = _chunk(b"IDAT", zlib.compress(rows))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + pre + idat + post + _chunk(b"IEND", b"")


def _gif(extra: bytes) -> bytes:
    out = io.BytesIO()
    Image.new("L", (16, 16), 128).save(out, "GIF")
    data = out.getvalue()
    first_image = data.index(b",")
    return data[:first_image] + extra + data[first_image:]


def _refused(data: bytes, name: str, match: str) -> None:
    with pytest.raises(imaging.ImageBudgetError, match=match) as refusal:
        imaging.load_for_storage(data, name, 512)
    assert str(refusal.value).startswith(f"{name}: ") and "\n" not in str(refusal.value)


# --- metadata Pillow would copy into the stored JPEG ----------------------------------------------


@pytest.mark.parametrize(
    "name, data",
    [
        ("long.gif", _gif(b"!\xfe" + b"\xffc" + b"c" * 254 + (b"\xff" + b"c" * 255) * 300 + b"\0")),
        ("long.png", _png(pre=_chunk(b"tEXt", b"comment\0" + b"c" * 70_000))),
    ],
    ids=["gif", "png"],
)
def test_a_comment_longer_than_a_jpeg_holds_is_not_copied_into_the_stored_copy(name, data):
    # Before: ValueError "Comment is too long" from Pillow's JPEG writer, a traceback out of preparation.
    stored, size = imaging.load_for_storage(data, name, 8)  # resized, so re-encoded
    assert size == (8, 8) and b"\xff\xfe" not in stored[: stored.index(b"\xff\xda")]


# --- headers Pillow reads an item at a time -------------------------------------------------------


@pytest.mark.parametrize(
    "name, data",
    [
        ("comments.jpeg", _jpeg()[:2] + b"\xff\xfe\x00\x02" * MANY + _jpeg()[2:]),  # empty COM segments
        ("fill.jpeg", _jpeg().replace(b"\xff\xc0", b"\xff" * MANY + b"\xff\xc0", 1)),  # fill bytes before SOF
        ("stray.jpeg", _jpeg().replace(b"\xff\xc0", b"\0" * MANY + b"\xff\xc0", 1)),  # stray bytes
    ],
    ids=["comments", "fill", "stray"],
)
def test_a_jpeg_header_of_too_many_items_is_refused_before_pillow_reads_it(name, data):
    # Before: 7.8 M empty comments (31 MB) took 8.5 s and 570 MB; 10 MB of fill bytes 6 s.
    _refused(data, name, f"^{name}: a JPEG of more than 65,536 segments, fill or stray bytes before its first scan")
    assert jpeg_scans.count_header_items(_jpeg()) < 10


def test_a_png_of_too_many_chunks_is_refused_before_pillow_reads_them():
    # Before: 2.6 M empty chunks (31 MB) took 8.5 s and 330 MB.
    _refused(_png(pre=_chunk(b"prVt", b"") * MANY), "chunks.png", "^chunks.png: a PNG of more than 65,536 chunks")
    _refused(_png(post=_chunk(b"prVt", b"") * MANY), "after.png", "^after.png: a PNG of more than 65,536 chunks")
    assert imaging.load_for_storage(_png(post=_chunk(b"prVt", b"") * 1000), "ok.png", 512)[1] == (64, 64)


@pytest.mark.parametrize(
    "extra",
    [b"!\xfe" + b"\x01c" * MANY + b"\0", b"\x07" * MANY],  # one-byte comment sub-blocks; stray bytes
    ids=["comment-blocks", "stray"],
)
def test_a_gif_of_too_many_blocks_before_its_first_image_is_refused(extra):
    # Before: 5 M one-byte comment blocks (10 MB) took 1.9 s and 440 MB, then a "Comment is too long" traceback.
    _refused(_gif(extra), "x.gif", "^x.gif: a GIF of more than 65,536 blocks or stray bytes before its first image")


def test_an_upload_of_too_many_header_items_is_a_413_before_pillow_opens_it():
    for name, data, kind in [("x.jpeg", _jpeg()[:2] + b"\xff\xfe\x00\x02" * MANY + _jpeg()[2:], "JPEG")]:
        with pytest.raises(uploads.UploadError, match=f"^{name}: a JPEG of more than 65,536") as refusal:
            uploads.check_header(data, name, kind, 50_000_000)
        assert refusal.value.status == uploads.PAYLOAD_TOO_LARGE
    with pytest.raises(uploads.UploadError, match="^x.png: a PNG of more than 65,536 chunks"):
        uploads.check_header(_png(pre=_chunk(b"prVt", b"") * MANY), "x.png", "PNG", 50_000_000)


# --- what Pillow allocates or loops over beyond the pixels ----------------------------------------


def _tiled_tiff(tile: int) -> bytes:
    """A 16 x 16 grey TIFF in one deflated ``tile`` x ``tile`` tile (libtiff decodes it)."""
    pixels = zlib.compress(bytes(range(256)) if tile == 16 else b"\0" * 1024)
    entries = [(256, 4, 1, 16), (257, 4, 1, 16), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1), (277, 3, 1, 1)]
    entries += [(322, 4, 1, tile), (323, 4, 1, tile), (324, 4, 1, 8 + 2 + 12 * 10 + 4), (325, 4, 1, len(pixels))]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0" * 4
    return b"II*\x00" + struct.pack("<I", 8) + ifd + pixels


def test_a_tiff_tile_larger_than_the_budget_allows_is_refused_before_decoding():
    # Before: a 16 x 16 image in one 32768 x 32768 tile (151 bytes) took 1 GB to decode.
    _refused(
        _tiled_tiff(32768), "tile.tif", r"^tile.tif: a TIFF image of 16x16 pixels in mode L in tiles of 32768x32768"
    )
    gray = imaging.decode_file(_tiled_tiff(16), "ok.tif")
    assert np.array_equal(np.asarray(gray), np.arange(256, dtype=np.uint8).reshape(16, 16))


def test_a_tiff_tag_of_too_many_values_is_refused_before_pillow_unpacks_it():
    # Before: 1 M RATIONAL values of XResolution (8 MB) took 2.2 s and 165 MB; 16 times that in 128 MB.
    n = imaging.MAX_TIFF_VALUES + 1
    entries = [(256, 4, 1, 16), (257, 4, 1, 16), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, 0)]
    entries += [(277, 3, 1, 1), (278, 4, 1, 16), (279, 4, 1, 256), (282, 5, n, 8 + 2 + 12 * 11 + 4 + 256)]
    entries[5] = (273, 4, 1, 8 + 2 + 12 * 11 + 4)
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0" * 4
    rationals = struct.pack("<II", 72, 1) * n
    _refused(
        b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x80" * 256 + rationals,
        "x.tif",
        "^x.tif: a TIFF tag 282 of 196,609 values",
    )


def test_a_tall_strip_counts_pillows_pointer_per_row(monkeypatch):
    # Before: a 1 x 80,000,000 PNG (151 kB) took 690 MB (8 bytes a row) before being refused as too long.
    assert imaging.decode_bytes("L", 1, 1000) >= 1000 * 2 + 1000 * 24
    monkeypatch.setenv(limits.ENV_VAR, "32M")
    _refused(_png(1, 2_000_000), "strip.png", "^strip.png: a PNG image of 1x2000000 pixels in mode L would take")


def _rle8_bmp(width: int, height: int, runs: bytes) -> bytes:
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(runs), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(runs), 0, 0, offset) + dib + palette + runs


def test_an_rle_bmp_of_too_many_pixels_or_runs_is_refused_before_pillow_decodes_it_in_python():
    # Before: a 9400 x 9400 RLE BMP of empty rows (38 kB) took 10 s; 5 M runs past a row's end 2.3 s per 10 MB.
    match = r"^{}: an RLE BMP of {} pixels in [\d,]+ bytes, over the 16,777,216 pixels plus twice its bytes"
    _refused(_rle8_bmp(4200, 4200, b"\0\0" * 4200 + b"\0\1"), "rows.bmp", match.format("rows.bmp", "4200x4200"))
    _refused(_rle8_bmp(4, 4, b"\x04\x80" * 4_200_000), "runs.bmp", match.format("runs.bmp", "4x4"))
    rows = b"".join(bytes([64, y]) + b"\0\0" for y in range(64)) + b"\0\1"
    gray = imaging.decode_file(_rle8_bmp(64, 64, rows), "ok.bmp")
    assert np.array_equal(np.asarray(gray)[::-1, 0], np.arange(64))  # bottom-up rows, each of its index


# --- DICOM: what pydicom and OpenJPEG build before the pixels -------------------------------------


def _with_elements(path, elements: bytes) -> bytes:
    """The DICOM file at ``path`` with raw explicit-VR ``elements`` inserted before its pixel data."""
    data = open(path, "rb").read()
    at = data.rindex(b"\xe0\x7f\x10\x00")
    return data[:at] + elements + data[at:]


def _dicom_refused(data: bytes, match: str, error=dicom.DicomBudgetError) -> None:
    with pytest.raises(error, match=f"^scan.dcm: {match}") as refusal:
        dicom.read_gray(data, "scan.dcm")
    assert "\n" not in str(refusal.value)


def _sequence(items: bytes, tag=(0x0009, 0x1010)) -> bytes:
    head = struct.pack("<HH2sHI", *tag, b"SQ", 0, 0xFFFFFFFF)
    return head + items + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def test_a_dicom_of_too_many_items_or_elements_is_refused_before_pydicom_builds_them(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "x.dcm", radiograph())
    # Before: 1.2 M empty sequence items (9.4 MB) took 18 s and 800 MB.
    items = _sequence(struct.pack("<HHI", 0xFFFE, 0xE000, 0) * (dicom.MAX_ITEMS + 1))
    _dicom_refused(_with_elements(path, items), "a DICOM dataset of 65,537 sequence items or pixel data fragments")
    # Before: 921,600 empty elements (7 MB) took 6 s and 300 MB. pydicom keeps what it read when a read
    # fails, so the refusal is not a "file without pixel data". (A lower limit keeps the test quick.)
    monkeypatch.setattr(dicom, "MAX_READS", 1000)
    many = b"".join(struct.pack("<HH2sH", 9, e, b"LO", 0) for e in range(0x1000, 0x1000 + 2000))
    _dicom_refused(_with_elements(path, many), "a DICOM dataset of more elements than 1,000 reads parse")
    assert dicom.read_gray(open(path, "rb").read(), "ok.dcm").shape == (60, 50)


def test_a_dicom_lut_sequence_too_large_to_parse_is_refused_before_it_is_read(tmp_path):
    # Before: a VOILUTSequence of 1 M empty elements (7 MB), parsed when the window is read, took 4 s.
    body = struct.pack("<HH2sHI", 0x0009, 0x1000, b"OB", 0, dicom.MAX_LUT_SEQUENCE_BYTES)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, len(body) + dicom.MAX_LUT_SEQUENCE_BYTES) + body
    lut = struct.pack("<HH2sHI", 0x0028, 0x3010, b"SQ", 0, len(item) + dicom.MAX_LUT_SEQUENCE_BYTES) + item
    data = _with_elements(write_dicom(tmp_path / "x.dcm", radiograph()), lut + b"\0" * dicom.MAX_LUT_SEQUENCE_BYTES)
    _dicom_refused(data, "a DICOM VOILUTSequence of 1,048,596 bytes, over the 1,048,576 parsed")


def test_deeply_nested_dicom_sequences_are_named_as_such(tmp_path):
    nest = b""
    for _ in range(2000):
        nest = _sequence(
            struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + nest + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        )
    data = _with_elements(write_dicom(tmp_path / "x.dcm", radiograph()), nest)
    _dicom_refused(data, r"not a readable DICOM file \(sequences nested too deeply\)$", dicom.DicomError)


def test_a_jpeg_2000_frame_of_too_many_tiles_is_refused_before_openjpeg_builds_them(tmp_path):
    # Before: 65,025 tiles of 8 x 8 pixels (4.6 MB, 3 components) took 780 MB. Here only the header.
    if not pydicom.pixels.get_decoder(JPEG2000Lossless).is_available:
        pytest.skip("no JPEG 2000 decoder installed for pydicom")
    siz = struct.pack(">HIIIIIIIIH", 0, 2040, 2040, 0, 0, 8, 8, 0, 0, 1) + bytes([7, 1, 1])
    frame = b"\xff\x4f\xff\x51" + struct.pack(">H", len(siz) + 2) + siz + b"\xff\xd9"
    shape = np.zeros((2040, 2040), np.uint16)
    path = write_dicom(tmp_path / "x.dcm", shape, transfer_syntax=JPEG2000Lossless, pixel_data=encapsulate([frame]))
    _dicom_refused(open(path, "rb").read(), "a DICOM JPEG 2000 frame of 65,025 tiles x components, over the 16,384")


# --- external folders: read as preparation reads them ---------------------------------------------


def test_external_folder_files_are_checked_and_read_as_preparation_reads_them(tmp_path):
    # Before: the pipeline opened external files with every Pillow plugin and no budget: a DICOM was
    # an UnidentifiedImageError traceback, a 16-bit PNG came out white, a 20000 x 20000 PNG a
    # DecompressionBombError traceback, none naming the file.
    plain = _jpeg("L", (600, 600))
    assert external.checked_image(plain, "a.jpeg", 512) is plain  # decoded by the pipeline as before
    scan = open(write_dicom(tmp_path / "x.dcm", radiograph()), "rb").read()
    assert Image.open(io.BytesIO(external.checked_image(scan, "x.dcm", 512))).size == (50, 60)
    ramp = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (64, 1))  # 12-bit values in a 16-bit PNG
    out = io.BytesIO()
    Image.fromarray(ramp).save(out, "PNG")
    stored = np.asarray(Image.open(io.BytesIO(external.checked_image(out.getvalue(), "deep.png", 512))))
    assert stored[:, 0].max() < 8 and stored[:, -1].min() > 247  # stretched, not clipped to white
    with pytest.raises(external.ExternalDataError, match=r"^bomb.png: refused as a decompression bomb"):
        external.checked_image(_png(20000, 20000, header_only=True), "bomb.png", 512)
    # The pipeline decodes with the plugins that checked the file, no other (a PPM here).
    out = io.BytesIO()
    Image.new("L", (8, 8)).save(out, "PPM")
    with pytest.raises(Image.UnidentifiedImageError):
        transforms.decode_gray(out.getvalue(), 8)
