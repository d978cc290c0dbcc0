"""Image files (JPEG, PNG, GIF, TIFF, BMP) from anywhere: what decoding one may cost, and what it may yield.

What data preparation, the data report, effnet-predict and effnet-serve decode (DICOM files:
test_untrusted_images_dicom.py). Each file is built here, small: only the documented formats are
opened; a file is refused in one line naming it, from what it declares, before Pillow does the work
(the decoded-size budget, its header items, its scans and Exif segments); and pixels no diagnosis
can be made from are an error, not a probability (docs/untrusted-inputs.md).
"""

import concurrent.futures
import contextlib
import io
import logging
import os
import struct
import threading
import tracemalloc
import warnings
import zlib

import crafted_fixtures as crafted
import numpy as np
import pydicom
import pytest
from dicom_fixtures import radiograph, write_dicom
from PIL import Image
from pydicom.uid import ExplicitVRBigEndian

from effnet_jax import limits, serving
from effnet_jax.data import imaging, jpeg_scans
from effnet_jax.inference.inputs import expand_inputs

# --- formats and frames ---------------------------------------------------------------------------


def _ramp_png(width=40, height=30) -> bytes:
    out = io.BytesIO()
    Image.fromarray((np.arange(width * height) % 251).astype(np.uint8).reshape(height, width)).save(out, "PNG")
    return out.getvalue()


def test_an_eps_file_named_png_runs_no_ghostscript(tmp_path, monkeypatch):
    # Pillow opens EPS by running Ghostscript on it: a "gs" on PATH that leaves a mark if run.
    marker = tmp_path / "gs-ran"
    gs = tmp_path / "bin" / "gs"
    gs.parent.mkdir()
    gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{gs.parent}{os.pathsep}{os.environ['PATH']}")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n"
    with pytest.raises(imaging.BadImageError, match=r"^scan\.png: not an image"):
        imaging.decode_file(eps, "scan.png")
    assert not marker.exists()
    # Formats outside the documented ones are not opened either (their decoders are not reached).
    ppm = io.BytesIO()
    Image.new("L", (8, 8)).save(ppm, "PPM")
    with pytest.raises(imaging.BadImageError, match=r"^x\.ppm: not an image"):
        imaging.decode_file(ppm.getvalue(), "x.ppm")
    assert imaging.decode_file(_ramp_png(), "ok.png").size == (40, 30)


def _tiff_with_a_second_frame_without_dimensions() -> bytes:
    """A 1x1 grey TIFF whose second IFD (frame) has no tags at all."""
    tags = [(256, 1), (257, 1), (258, 8), (259, 1), (262, 1), (273, 0), (278, 1), (279, 1)]
    first = 8
    data_at = first + 2 + 12 * len(tags) + 4
    second = data_at + 2
    ifd = struct.pack("<H", len(tags))
    for tag, value in tags:
        kind, value = (4, data_at) if tag == 273 else (3, value)
        ifd += struct.pack("<HHI", tag, kind, 1) + (
            struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        )
    return (
        b"II*\x00" + struct.pack("<I", first) + ifd + struct.pack("<I", second) + b"\x80\x00" + b"\x00\x00" + b"\0" * 4
    )


def test_a_multi_frame_tiff_with_a_damaged_second_frame_reads_its_first():
    # Counting frames (n_frames) parsed the damaged frame and raised a bare TypeError.
    gray = imaging.decode_file(_tiff_with_a_second_frame_without_dimensions(), "multi.tif")
    assert gray.size == (1, 1) and gray.mode == "L"


@pytest.mark.parametrize(
    "name, make",
    [
        (
            "frames.gif",
            lambda out: Image.new("L", (8, 8)).save(
                out, "GIF", save_all=True, append_images=[Image.new("L", (8, 8), i % 255) for i in range(2000)]
            ),
        ),
        (
            "pages.tif",
            lambda out: Image.new("L", (8, 8)).save(
                out, "TIFF", save_all=True, append_images=[Image.new("L", (8, 8), i % 255) for i in range(1000)]
            ),
        ),
    ],
    ids=["gif-2000-frames", "tiff-1000-pages"],
)
def test_multi_frame_files_decode_their_first_frame_only(name, make):
    out = io.BytesIO()
    make(out)
    assert imaging.decode_file(out.getvalue(), name).size == (8, 8)


# --- the decoded-size budget ----------------------------------------------------------------------


def _read(path):
    with open(path, "rb") as f:
        return imaging.decode_file(f.read(), str(path))


def test_an_image_header_declaring_more_than_the_budget_is_refused_before_decoding(tmp_path):
    path = crafted.png_header(tmp_path / "huge.png", 9000, 9000)
    with pytest.raises(imaging.BadImageError) as info:
        _read(path)
    crafted.refused_by_budget(info.value, path)
    assert "image of 9000x9000 pixels in mode RGBA" in str(info.value)


def test_a_float_tiff_over_the_budget_is_refused_and_one_within_it_reads(tmp_path, small_budget):
    big, small = tmp_path / "big.tif", tmp_path / "small.tif"
    Image.fromarray(np.zeros((1000, 800), np.float32)).save(big)
    Image.fromarray(np.linspace(0, 1, 60 * 50, dtype=np.float32).reshape(60, 50)).save(small)
    with pytest.raises(imaging.BadImageError) as info:
        _read(big)
    crafted.refused_by_budget(info.value, big)
    assert "mode F" in str(info.value)
    assert _read(small).size == (50, 60)


def test_the_eda_scan_holds_images_to_the_budget(tmp_path):
    from effnet_jax.data.eda import scan

    path = crafted.png_header(tmp_path / "huge.png", 9000, 9000)
    with pytest.raises(imaging.BadImageError) as info:
        scan._decode(open(path, "rb").read(), path)
    crafted.refused_by_budget(info.value, path)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32])
def test_high_bit_depth_images_scale_by_blocks_as_a_whole(dtype, monkeypatch):
    rng = np.random.default_rng(0)
    arr = (rng.normal(0, 1000, (61, 53)) + (3000 if dtype == np.uint16 else 0)).astype(dtype)
    monkeypatch.setattr(imaging, "BLOCK_PIXELS", 3 * 53)
    wide = arr.astype(np.float64)
    lo, hi = wide.min(), wide.max()
    expected = np.round((wide - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(imaging.to_gray(Image.fromarray(arr))), expected)


def test_a_header_pillow_calls_a_decompression_bomb_is_a_budget_refusal():
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)  # 900 M grey pixels
    chunks = [ihdr, b"IDAT" + zlib.compress(b"\0" * 64), b"IEND"]
    header = b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(c) - 4) + c + struct.pack(">I", zlib.crc32(c)) for c in chunks
    )
    with pytest.raises(imaging.ImageBudgetError, match=r"^bomb\.png: refused as a decompression bomb"):
        imaging.decode_file(bytes(header), "bomb.png")


def _refused(data: bytes, name: str, match: str) -> None:
    with pytest.raises(imaging.ImageBudgetError, match=match) as refusal:
        imaging.load_for_storage(data, name, 512)
    assert str(refusal.value).startswith(f"{name}: ") and "\n" not in str(refusal.value)


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


def test_a_tall_strip_counts_pillows_pointer_per_row(monkeypatch):
    # Before: a 1 x 80,000,000 PNG (151 kB) took 690 MB (8 bytes a row) before being refused as too long.
    assert imaging.decode_bytes("L", 1, 1000) >= 1000 * 2 + 1000 * 24
    monkeypatch.setenv(limits.ENV_VAR, "32M")
    _refused(
        crafted.grey_png(1, 2_000_000), "strip.png", "^strip.png: a PNG image of 1x2000000 pixels in mode L would take"
    )


def _flat_png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), 7).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("size", [(100_000, 1), (1, 70_000)])
def test_an_image_longer_than_a_stored_jpeg_holds_is_a_bad_image_naming_it(size):
    # Pillow's JPEG writer raised OSError ("broken data stream") on saving the stored copy: a traceback
    # in effnet-predict and data preparation, an HTTP 500 in effnet-serve.
    with pytest.raises(imaging.BadImageError) as caught:
        imaging.load_for_storage(_flat_png(*size), "scans/strip.png", 512)
    message = str(caught.value)
    assert message.startswith("scans/strip.png: an image of ") and "65,500 pixels a side" in message
    assert "\n" not in message
    # Long, but storable once resized: still read.
    _, (height, width) = imaging.load_for_storage(_flat_png(60_000, 2), "ok.png", 512)
    assert (height, width) == (2, 60_000)


# --- headers Pillow reads an item at a time -------------------------------------------------------


MANY = imaging.MAX_HEADER_ITEMS + 10


@pytest.mark.parametrize(
    "name, data",
    [
        (
            "comments.jpeg",
            crafted.grey_jpeg()[:2] + b"\xff\xfe\x00\x02" * MANY + crafted.grey_jpeg()[2:],
        ),  # empty COM segments
        (
            "fill.jpeg",
            crafted.grey_jpeg().replace(b"\xff\xc0", b"\xff" * MANY + b"\xff\xc0", 1),
        ),  # fill bytes before SOF
        ("stray.jpeg", crafted.grey_jpeg().replace(b"\xff\xc0", b"\0" * MANY + b"\xff\xc0", 1)),  # stray bytes
    ],
    ids=["comments", "fill", "stray"],
)
def test_a_jpeg_header_of_too_many_items_is_refused_before_pillow_reads_it(name, data):
    # Before: 7.8 M empty comments (31 MB) took 8.5 s and 570 MB; 10 MB of fill bytes 6 s.
    _refused(data, name, f"^{name}: a JPEG of more than 65,536 segments, fill or stray bytes before its first scan")
    assert jpeg_scans.count_header_items(crafted.grey_jpeg()) < 10


def test_a_png_of_too_many_chunks_is_refused_before_pillow_reads_them():
    # Before: 2.6 M empty chunks (31 MB) took 8.5 s and 330 MB.
    _refused(
        crafted.grey_png(pre=crafted.png_chunk(b"prVt", b"") * MANY),
        "chunks.png",
        "^chunks.png: a PNG of more than 65,536 chunks",
    )
    _refused(
        crafted.grey_png(post=crafted.png_chunk(b"prVt", b"") * MANY),
        "after.png",
        "^after.png: a PNG of more than 65,536 chunks",
    )
    assert imaging.load_for_storage(crafted.grey_png(post=crafted.png_chunk(b"prVt", b"") * 1000), "ok.png", 512)[
        1
    ] == (64, 64)


def _gif(extra: bytes) -> bytes:
    out = io.BytesIO()
    Image.new("L", (16, 16), 128).save(out, "GIF")
    data = out.getvalue()
    first_image = data.index(b",")
    return data[:first_image] + extra + data[first_image:]


@pytest.mark.parametrize(
    "extra",
    [b"!\xfe" + b"\x01c" * MANY + b"\0", b"\x07" * MANY],  # one-byte comment sub-blocks; stray bytes
    ids=["comment-blocks", "stray"],
)
def test_a_gif_of_too_many_blocks_before_its_first_image_is_refused(extra):
    # Before: 5 M one-byte comment blocks (10 MB) took 1.9 s and 440 MB, then a "Comment is too long" traceback.
    _refused(_gif(extra), "x.gif", "^x.gif: a GIF of more than 65,536 blocks or stray bytes before its first image")


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


def _tiff_strips(n):
    """A 1 x ``n`` grey TIFF of ``n`` one-row strips, every strip the same byte."""
    entries = 9
    data_at = 8 + 2 + entries * 12 + 4
    offsets_at, counts_at = data_at + 1, data_at + 1 + 4 * n
    tags = [(256, 4, 1, 1), (257, 4, 1, n), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1)]
    tags += [(273, 4, n, offsets_at), (277, 3, 1, 1), (278, 4, 1, 1), (279, 4, n, counts_at)]
    ifd = struct.pack("<H", entries) + b"".join(struct.pack("<HHII", *t) for t in tags) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x80" + struct.pack("<I", data_at) * n + b"\x01\x00\x00\x00" * n


def test_a_tiff_of_millions_of_strips_is_refused_before_pillow_lists_them():
    # Before: 2,000,000 one-row strips (16 MB) took 4 s and 650 MB to open, 12 s and 700 MB to decode.
    with pytest.raises(imaging.ImageBudgetError, match=r"^x.tif: a TIFF page of 70,000 StripOffsets, over the 65,536"):
        imaging.decode_file(_tiff_strips(70_000), "x.tif")
    assert imaging.decode_file(_tiff_strips(1000), "ok.tif").size == (1, 1000)


def test_the_data_report_scan_refuses_a_tiff_of_many_strips_before_pillow_lists_them():
    # Before: Pillow listed all 70,000 strips on opening (millions take seconds and hundreds of MB).
    from effnet_jax.data.eda import scan

    with pytest.raises(imaging.ImageBudgetError, match=r"^x.tif: a TIFF page of 70,000 StripOffsets, over"):
        scan._decode(_tiff_strips(70_000), "x.tif")
    assert scan._decode(_tiff_strips(1000), "ok.tif")[0].size == (1, 1000)


# --- JPEG scans, Exif segments and comments -------------------------------------------------------


def test_a_jpeg_of_hundreds_of_scans_is_refused_before_decoding():
    # Before: decoded: every scan is a pass over the whole image (400 scans of 56 bytes on a flat
    # 4096 x 4096 image: 4.6 s from 88 kB; a MB of them takes minutes).
    with pytest.raises(imaging.ImageBudgetError, match=r"^x.jpeg: a JPEG of 406 scans, over the 64 decoded"):
        imaging.decode_file(crafted.many_scans_jpeg(400), "x.jpeg")
    assert imaging.decode_file(crafted.many_scans_jpeg(10), "ok.jpeg").size == (
        256,
        256,
    )  # a few extra scans still decode


def test_the_data_report_scan_refuses_a_jpeg_of_hundreds_of_scans_before_decoding():
    # Before: scan._decode opened images without the scan check: every scan decoded (seconds per file).
    from effnet_jax.data.eda import scan

    with pytest.raises(imaging.ImageBudgetError, match=r"^x.jpeg: a JPEG of 406 scans, over the 64 decoded"):
        scan._decode(crafted.many_scans_jpeg(400), "x.jpeg")
    assert scan._decode(crafted.many_scans_jpeg(10), "ok.jpeg")[0].size == (256, 256)


def _noisy_jpeg(size=(256, 256), **kwargs) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, size[::-1], dtype=np.uint8)).save(out, "JPEG", **kwargs)
    return out.getvalue()


def _progressive(copies: int, size=16) -> bytes:
    """A progressive grey JPEG whose last scan (with the Huffman table before it) is repeated ``copies`` times."""
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (size, size), dtype=np.uint8)).save(
        out, "JPEG", progressive=True
    )
    data = out.getvalue()
    last = data.rindex(b"\xff\xda")  # Pillow's coded data never holds FF DA
    table = data.rfind(b"\xff\xc4", 0, last)
    start = table if table >= 0 and table + 2 + int.from_bytes(data[table + 2 : table + 4], "big") == last else last
    return data[:-2] + data[start:-2] * copies + b"\xff\xd9"


def _with_segment(data: bytes, marker: int, payload: bytes) -> bytes:
    """``data`` with a segment of ``marker`` holding ``payload`` right after its SOI."""
    return data[:2] + bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def test_ff_da_inside_metadata_or_past_the_end_of_image_is_no_scan():
    # Before: every FF DA byte pair was a scan: an Exif thumbnail of 100 scans, a comment or an MPO's
    # second frame made a photo of one scan "a JPEG of 101 scans", refused.
    photo = _noisy_jpeg()
    thumbnail = _progressive(100)
    assert jpeg_scans.count_scans(thumbnail) > imaging.MAX_JPEG_SCANS
    with_metadata = _with_segment(photo, 0xE1, b"Exif\0\0" + thumbnail)
    with_metadata = _with_segment(with_metadata, 0xFE, b"\xff\xda" * 100)  # a comment
    with_metadata = _with_segment(with_metadata, 0xED, b"Photoshop 3.0\0" + b"\xff\xda\0\x0c" * 100)  # APP13
    with_metadata += thumbnail  # past the end of image: an MPO's next frame, never decoded
    assert jpeg_scans.count_scans(with_metadata) == 1
    gray = imaging.decode_file(with_metadata, "photo.jpeg")
    assert np.array_equal(np.asarray(gray), np.asarray(Image.open(io.BytesIO(photo))))


def test_scans_are_still_counted_through_fill_bytes_restarts_and_coded_data():
    # The hostile case the cap is for: a progressive JPEG of many scans is refused as before.
    many = _progressive(100)
    with pytest.raises(imaging.ImageBudgetError, match=r"^x.jpeg: a JPEG of 10\d scans, over the 64 decoded"):
        imaging.decode_file(many, "x.jpeg")
    assert imaging.decode_file(_progressive(10), "ok.jpeg").size == (16, 16)
    # Fill bytes before a marker, restart markers and stuffed FF 00 pairs in coded data do not hide a scan.
    hidden = many.replace(b"\xff\xda", b"\xff\xd0\xff\x00\xff\xff\xff\xda")
    assert jpeg_scans.count_scans(hidden) == jpeg_scans.count_scans(many)
    # A restart-coded baseline JPEG is one scan, whatever its RSTn markers.
    assert jpeg_scans.count_scans(_noisy_jpeg(restart_marker_blocks=1)) == 1
    # Not a codestream a decoder would start on: every FF DA counts, as before.
    assert jpeg_scans.count_scans(b"\0\0" + b"\xff\xda" * 70) == 70
    # The walk is one regex search per segment, bounded: past MAX_HEADER_ITEMS segments the rest is
    # counted as bytes (in C), never fewer than a decoder meets.
    tail = b"\xff\xfe\x00\x02" * (jpeg_scans.MAX_HEADER_ITEMS + 1) + b"\xff\xda" * 70
    assert jpeg_scans.count_scans(b"\xff\xd8" + tail) == 70


def _jpeg_with_exif_segments(count: int, size: int = 1000) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 40), dtype=np.uint8)).save(out, "JPEG")
    base = out.getvalue()
    body = b"Exif\x00\x00" + b"\x00" * size
    return base[:2] + (b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body) * count + base[2:]


def test_a_jpeg_of_many_exif_segments_is_refused_before_pillow_joins_them():
    # Pillow copies the Exif joined so far at each segment: 1,500 of 64 kB took 52 s and 375 MB.
    data = _jpeg_with_exif_segments(jpeg_scans.MAX_EXIF_SEGMENTS + 1)
    with pytest.raises(imaging.ImageBudgetError, match=r"^x\.jpeg: a JPEG of 17 Exif segments, over the 16 read"):
        imaging.open_image(data, "x.jpeg")


def test_a_jpeg_of_a_few_exif_segments_still_opens():
    assert jpeg_scans.count_exif_segments(_jpeg_with_exif_segments(2)) == 2
    assert imaging.decode_file(_jpeg_with_exif_segments(jpeg_scans.MAX_EXIF_SEGMENTS), "x.jpeg").size == (40, 32)


@pytest.mark.parametrize(
    "name, data",
    [
        ("long.gif", _gif(b"!\xfe" + b"\xffc" + b"c" * 254 + (b"\xff" + b"c" * 255) * 300 + b"\0")),
        ("long.png", crafted.grey_png(pre=crafted.png_chunk(b"tEXt", b"comment\0" + b"c" * 70_000))),
    ],
    ids=["gif", "png"],
)
def test_a_comment_longer_than_a_jpeg_holds_is_not_copied_into_the_stored_copy(name, data):
    # Before: ValueError "Comment is too long" from Pillow's JPEG writer, a traceback out of preparation.
    stored, size = imaging.load_for_storage(data, name, 8)  # resized, so re-encoded
    assert size == (8, 8) and b"\xff\xfe" not in stored[: stored.index(b"\xff\xda")]


# --- pixels no diagnosis can be made from ---------------------------------------------------------


@pytest.fixture(scope="module")
def predictor(workdir):
    from effnet_jax import runs
    from effnet_jax.inference.prediction import Predictor

    return Predictor(runs.open(workdir, "best"), batch_size=4)


def _float_tiff(path, value) -> str:
    pixels = np.random.default_rng(0).random((24, 20)).astype(np.float32)
    pixels[5, 7] = value
    Image.fromarray(pixels, mode="F").save(path, format="TIFF")
    return str(path)


def test_non_finite_or_blanked_pixels_are_error_records(predictor, tmp_path):
    pixels = radiograph()
    files = [
        _float_tiff(tmp_path / "nan.tif", np.nan),
        _float_tiff(tmp_path / "inf.tif", np.inf),
        write_dicom(tmp_path / "slope.dcm", pixels, rescale=("NaN", 0)),
        write_dicom(tmp_path / "center.dcm", pixels, window=("NaN", 400)),
        write_dicom(tmp_path / "width.dcm", pixels, window=(2000, "NaN")),
        write_dicom(tmp_path / "blank.dcm", pixels, window=(1e9, 1)),  # every pixel below the window
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom's own note on a 'NaN' DS value
        records = list(predictor.predict(files))
    assert [set(r) for r in records] == [{"file", "error"}] * len(files)
    reasons = [r["error"] for r in records]
    assert all(e.startswith(f) and "\n" not in e for e, f in zip(reasons, files))
    assert "1 non-finite pixel value(s)" in reasons[0] and "1 non-finite pixel value(s)" in reasons[1]
    assert "non-finite pixel value(s) after the DICOM rescale" in reasons[2]
    assert "gives a non-finite range" in reasons[3] and "gives a non-finite range" in reasons[4]
    assert "every pixel is 0 after the DICOM rescale and window" in reasons[5]


def test_a_constant_16_bit_image_is_refused_but_a_flat_8_bit_one_is_read():
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 20), 3000, np.uint16)).save(buffer, format="PNG")
    with pytest.raises(imaging.BadImageError, match=r"^flat.png: every pixel of this I;16 image is 3000"):
        imaging.decode_file(buffer.getvalue(), "flat.png")
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 20), 128, np.uint8)).save(buffer, format="PNG")
    assert imaging.decode_file(buffer.getvalue(), "gray.png").getextrema() == (128, 128)


# --- image files named to effnet-predict and effnet-serve: their size, FIFOs ----------------------


def test_a_2_gb_sparse_input_is_refused_from_its_size_without_reading_it(tmp_path):
    from effnet_jax.inference.prediction import ImageReadError, Preprocessor
    from effnet_jax.serving import ImageInputError, read_image

    path = tmp_path / "sparse.jpeg"
    with open(path, "wb") as f:
        f.truncate(2 << 30)
    tracemalloc.start()
    try:
        with pytest.raises(ImageReadError) as predict_error:
            Preprocessor(32, (0.5,) * 3, (0.5,) * 3)(str(path))
        with pytest.raises(ImageInputError) as serving_error:
            read_image(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    for error in (predict_error.value, serving_error.value):
        assert "2,147,483,648 bytes, larger than the 134,217,728 accepted" in crafted.one_line_naming(error, path)
    assert peak < 1 << 20, f"{peak:,} bytes allocated"


def _finishes(fn, seconds=20):
    """Runs fn in a daemon thread; (finished, result or exception). A hang fails, not blocks, the test."""
    import threading

    box = {}

    def target():
        try:
            box["value"] = fn()
        except Exception as e:  # noqa: BLE001 - handed back to the test
            box["value"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), box.get("value")


def test_fifo_among_predict_inputs_is_skipped_with_a_message(tmp_path):
    from effnet_jax.inference.prediction import ImageReadError, Preprocessor

    fifo = tmp_path / "scan.jpeg"
    os.mkfifo(fifo)
    try:
        done, result = _finishes(lambda: Preprocessor(32, (0.5,) * 3, (0.5,) * 3)(str(fifo)))
    finally:
        # Unblock a reader stuck in open() (the unfixed code), so the thread can end.
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert done, "reading a FIFO hung"
    assert isinstance(result, ImageReadError) and "scan.jpeg: not a regular file" in str(result)


def _in_thread(fn, timeout=10):
    """``fn()``'s result or exception from a thread, or ``"blocked"`` when it has not returned within ``timeout``."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["value"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return out.get("value", "blocked")


def test_a_fifo_swapped_in_after_the_stat_does_not_block_the_reader(tmp_path, monkeypatch):
    regular = tmp_path / "scan.jpeg"
    regular.write_bytes(b"\xff\xd8\xff" + b"\0" * 64)
    fifo = tmp_path / "swapped.jpeg"
    os.mkfifo(fifo)
    # The race, made certain: any stat of the path sees the regular file it was a moment ago.
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: real_stat(regular if str(p) == str(fifo) else p, *a, **k))
    try:
        for reader, error in ((limits.read_regular_file, limits.BudgetError), (serving.read_image, ValueError)):
            result = _in_thread(lambda: reader(str(fifo)))
            assert result != "blocked", f"{reader.__name__} blocked opening a FIFO"
            assert isinstance(result, error) and str(result) == f"{fifo}: not a regular file (a FIFO, device or folder)"
    finally:
        monkeypatch.undo()
        # Unblocks a reader left blocked in open() (before the fix), so no thread stays behind.
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert limits.read_regular_file(str(regular)) == regular.read_bytes()


# A 16 x 16 grey gradient (x * 8 + y * 4), arithmetic-coded: Pillow cannot write arithmetic coding, so
# this is `jpegtran -arithmetic -copy none` of Pillow's quality-95 JPEG of it (a lossless transcoding).
ARITHMETIC_JPEG = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb0043000201010101010201010102020202020403020202020504040304060506"
    "060605060606070908060709070606080b08090a0a0a0a0a06080b0c0b0a0c090a0a0affc9000b080010001001011100ffcc00060010"
    "1005ffda0008010100003f00ff00eee93e4b3d2779ed05e052c4a5f8e319a65f0f22e2653f296e12d0ffd9"
)


def _jpeg(size=(40, 32), **save) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, size[::-1], dtype=np.uint8)).save(out, "JPEG", **save)
    return out.getvalue()


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def _with_segments(segments: list[bytes]) -> bytes:
    base = _jpeg()
    return base[:2] + b"".join(segments) + base[2:]


def _file_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _one_line(error: BaseException, start: str) -> str:
    message = str(error)
    assert message.startswith(start) and "\n" not in message, message
    return message


# --- JPEG codings: named, not called corrupt ----------------------------------------------------------


def test_an_arithmetic_coded_jpeg_decodes():
    # libjpeg-turbo (Pillow's) decodes arithmetic coding: the file is read, not refused.
    y, x = np.mgrid[0:16, 0:16]
    gray = np.asarray(imaging.decode_file(ARITHMETIC_JPEG, "ac.jpeg"), np.int16)
    assert np.abs(gray - (x * 8 + y * 4)).max() <= 2


def _with_frame_marker(marker: int) -> bytes:
    """A baseline JPEG whose frame header says another coding: what a decoder meets in such a file."""
    data = _jpeg()
    at = data.index(b"\xff\xc0")
    return data[:at] + bytes([0xFF, marker]) + data[at + 2 :]


def test_a_hierarchical_jpeg_is_named_as_one_libjpeg_does_not_decode():
    with pytest.raises(imaging.BadImageError) as refusal:
        imaging.decode_file(_with_frame_marker(0xC5), "h.jpeg")
    message = _one_line(refusal.value, "h.jpeg: a hierarchical JPEG (SOF5), which libjpeg does not decode (OSError: ")
    assert message.endswith("); save it as a baseline JPEG")


def test_an_arithmetic_coded_jpeg_that_does_not_decode_names_its_coding():
    # A progressive arithmetic-coded frame (SOF10) over a baseline scan: libjpeg refuses the scan.
    with pytest.raises(imaging.BadImageError) as refusal:
        imaging.decode_file(_with_frame_marker(0xCA), "ac.jpeg")
    message = _one_line(
        refusal.value, "ac.jpeg: an arithmetic-coded progressive JPEG (SOF10) that did not decode (OSError: "
    )
    assert message.endswith("): damaged, or a coding this build of libjpeg does not decode; save it as a baseline JPEG")
    assert "corrupt or truncated" not in message


# --- TIFF samples and compressions Pillow does not read --------------------------------------------------


def _float_tiff_bytes(**inline_shorts: int) -> bytes:
    """A 32-bit float TIFF by Pillow, its inline SHORT tags (by name: BitsPerSample=64) then set as given."""
    out = io.BytesIO()
    Image.fromarray(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), mode="F").save(out, "TIFF")
    data = bytearray(out.getvalue())
    tags = {"BitsPerSample": 258, "Compression": 259, "SampleFormat": 339}
    wanted = {tags[name]: value for name, value in inline_shorts.items()}
    offset = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[offset : offset + 2])[0]):
        at = offset + 2 + 12 * i
        tag, kind, count = struct.unpack("<HHI", data[at : at + 8])
        if tag in wanted:
            assert (kind, count) == (3, 1)  # one SHORT, in the entry itself
            data[at + 8 : at + 10] = struct.pack("<H", wanted.pop(tag))
    assert not wanted, f"tags not in Pillow's TIFF: {wanted}"
    return bytes(data)


@pytest.mark.parametrize(
    "tags, samples",
    [
        ({"BitsPerSample": 16}, "16-bit floating-point samples (BitsPerSample 16, SampleFormat 3)"),
        ({"BitsPerSample": 64}, "64-bit floating-point samples (BitsPerSample 64, SampleFormat 3)"),
        (
            {"BitsPerSample": 64, "SampleFormat": 6},
            "64-bit complex floating-point samples (BitsPerSample 64, SampleFormat 6)",
        ),
        ({"BitsPerSample": 64, "SampleFormat": 2}, "64-bit signed integer samples (BitsPerSample 64, SampleFormat 2)"),
    ],
    ids=["float16", "float64", "complex64", "int64"],
)
def test_a_tiff_of_samples_pillow_does_not_read_names_them(tags, samples):
    with pytest.raises(imaging.BadImageError) as refusal:
        imaging.decode_file(_float_tiff_bytes(**tags), "f.tif")
    assert str(refusal.value) == (
        f"f.tif: a TIFF of {samples}, which Pillow does not read; save it as 8- or 16-bit integers or 32-bit floats"
    )


def test_a_tiff_of_a_compression_pillow_does_not_read_names_it():
    with pytest.raises(imaging.BadImageError) as refusal:
        imaging.decode_file(_float_tiff_bytes(Compression=34712), "j.tif")  # JPEG 2000
    assert str(refusal.value) == (
        "j.tif: a TIFF of compression 34712, which Pillow does not read; save it uncompressed or with LZW, Deflate "
        "or JPEG compression"
    )


def test_a_32_bit_float_tiff_still_decodes():
    assert imaging.decode_file(_float_tiff_bytes(), "f.tif").size == (4, 3)


# --- DICOM byte order --------------------------------------------------------------------------------------


def _big_endian_dicom(tmp_path, pixels) -> bytes:
    path = write_dicom(tmp_path / "be.dcm", pixels, transfer_syntax=ExplicitVRBigEndian, pixel_data=b"")
    ds = pydicom.dcmread(path)
    ds.PixelData = pixels.astype(">u2").tobytes()  # pydicom writes pixel bytes as given
    ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)
    return _file_bytes(path)


def test_a_big_endian_dicom_decodes_as_its_little_endian_twin(tmp_path):
    pixels = radiograph()
    little = _file_bytes(write_dicom(tmp_path / "le.dcm", pixels))
    big = _big_endian_dicom(tmp_path, pixels)
    assert b"1.2.840.10008.1.2.2" in big
    np.testing.assert_array_equal(
        np.asarray(imaging.decode_file(big, "be.dcm")), np.asarray(imaging.decode_file(little, "le.dcm"))
    )


def _relabelled(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1
    return data.replace(old, new)


def test_a_little_endian_dicom_labelled_big_endian_is_named_mislabelled(tmp_path):
    # Read big-endian, every tag after the first came out garbled: it was "a DICOM file without pixel data".
    little = _file_bytes(write_dicom(tmp_path / "le.dcm", radiograph()))
    data = _relabelled(little, b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.2\x00")
    with pytest.raises(imaging.BadImageError) as refusal:
        imaging.decode_file(data, "x.dcm")
    assert str(refusal.value) == (
        "x.dcm: DICOM file declaring the transfer syntax Explicit VR Big Endian (1.2.840.10008.1.2.2), big-endian, "
        "whose pixel data is tagged little-endian: a mislabelled file; correct its TransferSyntaxUID"
    )


def test_a_big_endian_dicom_labelled_little_endian_is_named_mislabelled(tmp_path):
    data = _relabelled(
        _big_endian_dicom(tmp_path, radiograph()), b"1.2.840.10008.1.2.2\x00", b"1.2.840.10008.1.2.1\x00"
    )
    with pytest.raises(imaging.BadImageError) as refusal:
        imaging.decode_file(data, "x.dcm")
    assert str(refusal.value) == (
        "x.dcm: DICOM file declaring the transfer syntax Explicit VR Little Endian (1.2.840.10008.1.2.1), "
        "little-endian, whose pixel data is tagged big-endian: a mislabelled file; correct its TransferSyntaxUID"
    )


def test_a_dicom_file_without_pixel_data_is_still_called_so(tmp_path):
    path = write_dicom(tmp_path / "r.dcm", radiograph())
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(imaging.BadImageError) as refusal:
        imaging.decode_file(_file_bytes(path), "r.dcm")
    assert str(refusal.value) == "r.dcm: DICOM file without pixel data (a report or structured document?)"


# --- warnings named by their file ------------------------------------------------------------------------


def _jpeg_with_corrupt_exif(seed: int = 0) -> bytes:
    # An Exif IFD that claims 5 entries and holds none: Pillow warns "Corrupt EXIF data" as it opens it.
    exif = b"Exif\x00\x00" + b"II*\x00\x08\x00\x00\x00" + b"\x05\x00" + b"\x00" * 6
    base = _jpeg(size=(40 + seed, 32))
    return base[:2] + _segment(0xE1, exif) + base[2:]


def _named(caplog) -> list[tuple[str, int, str]]:
    return [(r.name, r.levelno, r.getMessage()) for r in caplog.records]


def test_pillows_corrupt_exif_warning_is_logged_once_naming_the_file(caplog):
    with warnings.catch_warnings(record=True) as escaped, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        assert imaging.decode_file(_jpeg_with_corrupt_exif(), "scans/e.jpeg").size == (40, 32)
    assert _named(caplog) == [
        (
            "effnet_jax.data",
            logging.WARNING,
            "scans/e.jpeg: Corrupt EXIF data.  Expecting to read 12 bytes but only got 6. ",
        )
    ]
    assert [str(w.message) for w in escaped] == []


def test_a_named_warning_stays_one_line_of_text(caplog):
    # The name and the warning's words may both come from the file: an escape code is written as text.
    with caplog.at_level(logging.WARNING):
        imaging.decode_file(_jpeg_with_corrupt_exif(), "x\x1b[2J\n.jpeg")
    assert [r.getMessage() for r in caplog.records] == [
        "x\\x1b[2J\\n.jpeg: Corrupt EXIF data.  Expecting to read 12 bytes but only got 6. "
    ]


def test_pydicoms_warning_is_logged_once_naming_the_file(tmp_path, caplog):
    # pydicom both logs and warns it (on stderr: twice, naming no file); extra bytes are not read as a frame.
    image = radiograph()
    path = write_dicom(tmp_path / "two.dcm", image, pixel_data=image.tobytes() * 2)
    single = write_dicom(tmp_path / "one.dcm", image)
    with warnings.catch_warnings(record=True) as escaped, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        read = imaging.decode_file(_file_bytes(path), "two.dcm")
    np.testing.assert_array_equal(np.asarray(read), np.asarray(imaging.decode_file(_file_bytes(single), "1")))
    assert _named(caplog) == [
        (
            "effnet_jax.data",
            logging.WARNING,
            f"two.dcm: The pixel data is {2 * image.nbytes} bytes long, which indicates it contains {image.nbytes} "
            "bytes of excess padding to be removed",
        )
    ]
    assert [str(w.message) for w in escaped] == []


def test_numpys_overflow_warning_is_dropped_for_the_refusal_that_names_the_file(tmp_path, caplog):
    path = write_dicom(tmp_path / "o.dcm", radiograph(), rescale=(1e308, 0))
    with warnings.catch_warnings(record=True) as escaped, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        with pytest.raises(imaging.BadImageError) as refusal:
            imaging.decode_file(_file_bytes(path), "o.dcm")
    assert str(refusal.value).startswith("o.dcm: non-finite pixel value(s) after the DICOM rescale / window")
    assert [str(w.message) for w in escaped] == [] and _named(caplog) == []


def test_warnings_while_no_file_is_read_are_left_alone():
    before = warnings.showwarning, list(warnings.filters)
    imaging.decode_file(_jpeg_with_corrupt_exif(), "e.jpeg")
    assert (warnings.showwarning, list(warnings.filters)) == before
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("not about a file", UserWarning)
    assert [str(w.message) for w in caught] == ["not about a file"]


def test_warnings_of_files_read_on_several_threads_name_their_own_file(caplog, monkeypatch):
    # effnet-serve decodes uploads on a thread pool: four files are read at once, each thread warning
    # while all four are inside their files.
    together, to_gray = threading.Barrier(4, timeout=30), imaging.to_gray

    def to_gray_together(im):
        together.wait()
        warnings.warn(f"an image {im.width} pixels wide", UserWarning)
        return to_gray(im)

    monkeypatch.setattr(imaging, "to_gray", to_gray_together)
    files = {f"f{i}.jpeg": _jpeg(size=(40 + i, 32)) for i in range(4)}
    before = warnings.showwarning, list(warnings.filters)
    with warnings.catch_warnings(record=True) as escaped, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda name: imaging.decode_file(files[name], name), files))
    assert sorted(r.getMessage() for r in caplog.records) == [
        f"f{i}.jpeg: an image {40 + i} pixels wide" for i in range(4)
    ]
    assert [str(w.message) for w in escaped] == []
    assert (warnings.showwarning, list(warnings.filters)) == before


# --- JPEG metadata (APPn segments) -------------------------------------------------------------------------


def _photoshop_segment(resources: int) -> bytes:
    empty = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", 0)  # no name, no data
    return _segment(0xED, b"Photoshop 3.0\x00" + empty * resources)


def test_a_jpeg_of_too_many_photoshop_resources_is_refused_before_pillow_parses_them():
    # Pillow parses each resource block in Python: 118 MB of empty ones took 6.7 s to open.
    per_segment = 5000
    count = imaging.MAX_PHOTOSHOP_RESOURCES // per_segment + 1
    data = _with_segments([_photoshop_segment(per_segment)] * count)
    with pytest.raises(imaging.ImageBudgetError) as refusal:
        imaging.open_image(data, "ps.jpeg")
    assert str(refusal.value) == (
        f"ps.jpeg: a JPEG of {count * per_segment:,} resource blocks in its Photoshop (APP13) segments, over the "
        f"{imaging.MAX_PHOTOSHOP_RESOURCES:,} read (Pillow parses each one by one)"
    )


def test_a_jpeg_of_a_few_photoshop_resources_still_opens():
    im = imaging.load_image(_with_segments([_photoshop_segment(40)]), "ps.jpeg")
    assert im.size == (40, 32) and list(im.info["photoshop"]) == [0x0404]


def test_a_jpeg_of_too_many_bytes_of_metadata_is_refused_naming_the_segment():
    body = b"\x00" * 65533
    count = imaging.MAX_JPEG_APP_BYTES // len(body) + 1
    data = _with_segments([_segment(0xE5, body)] * count)
    jfif = int.from_bytes(_jpeg()[4:6], "big") - 2  # Pillow's own APP0 segment, after ours
    with pytest.raises(imaging.ImageBudgetError) as refusal:
        imaging.open_image(data, "meta.jpeg")
    assert str(refusal.value) == (
        f"meta.jpeg: a JPEG of {count * len(body) + jfif:,} bytes of APPn metadata segments ({count * len(body):,} "
        f"in APP5 segments), over the {imaging.MAX_JPEG_APP_BYTES:,} read (Pillow copies each; an ICC profile takes "
        "at most 16 MB)"
    )


@pytest.mark.parametrize("megabytes", [3, 16])
def test_a_jpeg_with_an_icc_profile_split_across_app2_segments_still_opens(megabytes):
    # Pillow splits a profile over APP2 segments of 64 kB; 255 of them (about 16 MB) is the most a JPEG holds.
    profile = np.random.default_rng(1).integers(0, 256, megabytes * 1_000_000, dtype=np.uint8).tobytes()
    data = _jpeg(icc_profile=profile)
    assert data.count(b"ICC_PROFILE\x00") == -(-len(profile) // 65519)
    im = imaging.load_image(data, "icc.jpeg")
    assert im.size == (40, 32) and im.info["icc_profile"] == profile


# --- effnet-predict's folders --------------------------------------------------------------------------------


def test_a_folder_given_to_effnet_predict_includes_its_dicom_files(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    write_dicom(folder / "a.dcm", radiograph())
    write_dicom(folder / "b.DICOM", radiograph())
    (folder / "c.png").write_bytes(b"x")
    assert expand_inputs([str(folder)]) == [str(folder / name) for name in ("a.dcm", "b.DICOM", "c.png")]


def test_a_dicom_whose_jpeg_frame_holds_too_many_photoshop_resources_is_refused_before_pillow_parses_them(tmp_path):
    # The frame of a DICOM file is handed to Pillow as a JPEG file is, and held to the same header checks.
    pytest.importorskip("pydicom")
    from dicom_fixtures import write_dicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    per_segment = 5000
    count = imaging.MAX_PHOTOSHOP_RESOURCES // per_segment + 1
    frame = _with_segments([_photoshop_segment(per_segment)] * count)
    path = write_dicom(
        tmp_path / "ps.dcm",
        np.zeros((32, 40), np.uint16),
        transfer_syntax=JPEGBaseline8Bit,
        pixel_data=encapsulate([frame]),
    )
    with pytest.raises(imaging.ImageBudgetError) as refusal:
        imaging.decode_file(open(path, "rb").read(), path)
    assert str(refusal.value) == (
        f"{path}: a DICOM JPEG frame of {count * per_segment:,} resource blocks in its Photoshop (APP13) segments, "
        f"over the {imaging.MAX_PHOTOSHOP_RESOURCES:,} read (Pillow parses each one by one)"
    )
