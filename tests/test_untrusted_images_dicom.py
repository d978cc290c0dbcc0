"""DICOM files from anywhere: what pydicom and its decoders may be made to build, and what reads as a radiograph.

Each file is written here with pydicom (tests/dicom_fixtures.py), then tampered with. Data
preparation, effnet-predict and effnet-serve refuse, in one line naming the file, what it declares
beyond the decoded-size budget, a dataset of more items or elements than a radiograph holds, and a
frame or transfer syntax no decoder reads; a file within the rules reads as its uncompressed twin
(docs/untrusted-inputs.md).
"""

import io
import logging
import re
import struct
import tracemalloc
import warnings

import crafted_fixtures as crafted
import numpy as np
import pydicom
import pytest
from dicom_fixtures import radiograph, write_dicom
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from effnet_jax import limits
from effnet_jax.data import dicom, imaging

# --- compressed frames and the decoded-size budget ------------------------------------------------


def _refusal_and_peak(data: bytes, path):
    """The BadImageError decoding `data` raises, and the most memory Python allocated meanwhile."""
    tracemalloc.start()
    try:
        with pytest.raises(imaging.BadImageError) as info:
            imaging.decode_file(data, path)
        return info.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_an_rle_dicom_declaring_338_mb_is_refused_before_decoding(tmp_path):
    path = crafted.rle_bomb(tmp_path / "rle.dcm")
    data = open(path, "rb").read()
    assert len(data) < 6 << 20
    error, peak = _refusal_and_peak(data, path)
    crafted.refused_by_budget(error, path)
    assert "13000x13000x1 samples at 16 bits" in str(error)
    assert peak < 3 * len(data), f"{peak:,} bytes allocated"  # the parsed file, not its pixels


def test_a_deflated_dicom_is_inflated_no_further_than_the_budget(tmp_path, small_budget):
    path = crafted.deflated_bomb(tmp_path / "deflated.dcm", inflated=64 << 20)
    data = open(path, "rb").read()
    error, peak = _refusal_and_peak(data, path)
    crafted.refused_by_budget(error, path)
    assert "deflated DICOM dataset" in str(error)
    assert peak < 4 << 20, f"{peak:,} bytes allocated"


def _read(path):
    with open(path, "rb") as f:
        return imaging.decode_file(f.read(), str(path))


def test_a_deflated_dicom_within_the_budget_reads_as_its_explicit_twin(tmp_path):
    explicit = write_dicom(tmp_path / "explicit.dcm", radiograph(80, 70), window=(2000, 3000))
    ds = pydicom.dcmread(explicit)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(np.asarray(_read(tmp_path / "deflated.dcm")), np.asarray(_read(explicit)))


def test_an_rle_segment_running_past_its_plane_is_refused(tmp_path, small_budget):
    # 64x64 pixels: 4096-byte planes, but the first segment's runs decode to 64 MiB.
    segment = b"\x81\x00" * ((64 << 20) // 128)
    frame = struct.pack("<16L", 2, 64, 64 + len(segment), *([0] * 13)) + segment + segment
    pixels = np.zeros((64, 64), np.uint16)
    path = write_dicom(tmp_path / "runs.dcm", pixels, transfer_syntax=RLELossless, pixel_data=encapsulate([frame]))
    with pytest.raises(imaging.BadImageError) as info:
        _read(path)
    assert "an RLE segment of the first DICOM frame decodes to more than the 4,096 bytes" in crafted.one_line_naming(
        info.value, path
    )


def test_rle_dicom_reads_as_its_uncompressed_twin_when_its_segments_are_counted(tmp_path, monkeypatch):
    plain = write_dicom(tmp_path / "plain.dcm", radiograph(90, 70), window=(2000, 3000))
    ds = pydicom.dcmread(plain)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    # A budget so small that the segments' worst case does not fit: their runs are counted.
    monkeypatch.setenv(limits.ENV_VAR, str(dicom.decode_bytes(90, 70, 1, 16, True) + 1000))
    np.testing.assert_array_equal(np.asarray(_read(tmp_path / "rle.dcm")), np.asarray(_read(plain)))


def test_a_jpeg_frame_larger_than_its_dicom_header_is_refused(tmp_path):
    out = io.BytesIO()
    Image.new("L", (640, 480)).save(out, format="JPEG")
    path = write_dicom(
        tmp_path / "jpeg.dcm",
        np.zeros((16, 16), np.uint16),
        transfer_syntax=JPEGBaseline8Bit,
        pixel_data=encapsulate([out.getvalue()]),
    )
    with pytest.raises(imaging.BadImageError) as info:
        _read(path)
    assert "the first compressed DICOM frame declares 640x480 pixels" in crafted.one_line_naming(info.value, path)


@pytest.mark.parametrize(
    "tags",
    [
        {},
        {"window": (2000, 3000)},
        {"rescale": (2.0, -100.0), "window": (3000, 4000)},
        {"photometric": "MONOCHROME1"},
        {"window": (2000, 3000), "voi_function": "SIGMOID"},
    ],
    ids=["own-range", "window", "rescale-window", "monochrome1", "sigmoid"],
)
def test_the_lut_steps_by_blocks_give_the_whole_image_result_within_the_counted_memory(tags, tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "x.dcm", radiograph(300, 200), **tags)
    data = open(path, "rb").read()
    whole = dicom.read_gray(data, path)  # 60,000 pixels: one block
    monkeypatch.setattr(dicom, "BLOCK_PIXELS", 7 * 200)  # 43 blocks, the last one short
    tracemalloc.start()
    try:
        blocks = dicom.read_gray(data, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(blocks, whole)
    assert peak <= len(data) + dicom.decode_bytes(300, 200, 1, 16, False), f"{peak:,} bytes allocated"


def test_a_dicom_whose_jpeg_frame_has_hundreds_of_scans_is_refused_before_decoding(tmp_path):
    # Before: the frame's size was checked, then every scan decoded.
    pytest.importorskip("pydicom")
    from dicom_fixtures import write_dicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    path = write_dicom(
        tmp_path / "scans.dcm",
        np.zeros((256, 256), np.uint16),
        transfer_syntax=JPEGBaseline8Bit,
        pixel_data=encapsulate([crafted.many_scans_jpeg(400)]),
    )
    with pytest.raises(imaging.ImageBudgetError, match=f"^{re.escape(path)}: a DICOM JPEG frame of 406 scans, over"):
        imaging.decode_file(open(path, "rb").read(), path)


def _dicom_refused(data: bytes, match: str, error=dicom.DicomBudgetError) -> None:
    with pytest.raises(error, match=f"^scan.dcm: {match}") as refusal:
        dicom.read_gray(data, "scan.dcm")
    assert "\n" not in str(refusal.value)


def test_a_jpeg_2000_frame_of_too_many_tiles_is_refused_before_openjpeg_builds_them(tmp_path):
    # Before: 65,025 tiles of 8 x 8 pixels (4.6 MB, 3 components) took 780 MB. Here only the header.
    if not pydicom.pixels.get_decoder(JPEG2000Lossless).is_available:
        pytest.skip("no JPEG 2000 decoder installed for pydicom")
    siz = struct.pack(">HIIIIIIIIH", 0, 2040, 2040, 0, 0, 8, 8, 0, 0, 1) + bytes([7, 1, 1])
    frame = b"\xff\x4f\xff\x51" + struct.pack(">H", len(siz) + 2) + siz + b"\xff\xd9"
    shape = np.zeros((2040, 2040), np.uint16)
    path = write_dicom(tmp_path / "x.dcm", shape, transfer_syntax=JPEG2000Lossless, pixel_data=encapsulate([frame]))
    _dicom_refused(open(path, "rb").read(), "a DICOM JPEG 2000 frame of 65,025 tiles x components, over the 16,384")


# --- datasets pydicom would parse an item at a time -----------------------------------------------


def _with_elements(path, elements: bytes) -> bytes:
    """The DICOM file at ``path`` with raw explicit-VR ``elements`` inserted before its pixel data."""
    data = open(path, "rb").read()
    at = data.rindex(b"\xe0\x7f\x10\x00")
    return data[:at] + elements + data[at:]


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


# --- what pydicom cannot read, or would misread ---------------------------------------------------


def _patched(path, old: bytes, new: bytes) -> bytes:
    data = open(path, "rb").read()
    assert data.count(old) == 1
    return data.replace(old, new)


def test_a_dicom_of_a_transfer_syntax_no_one_knows_is_one_line(tmp_path):
    # pydicom's UID.is_compressed raised "UID is not a transfer syntax" (ValueError): a traceback.
    path = write_dicom(tmp_path / "x.dcm", radiograph())
    data = _patched(path, b"1.2.840.10008.1.2.1\0", b"1.2.3.4.5.6.7.8.9.0\0")
    with pytest.raises(
        imaging.BadImageError, match=r"^scan\.dcm: DICOM TransferSyntaxUID '1\.2\.3\.4\.5\.6\.7\.8\.9\.0' "
    ):
        imaging.decode_file(data, "scan.dcm")


@pytest.mark.parametrize("keyword", ["FloatPixelData", "DoubleFloatPixelData"])
def test_a_dicom_of_floating_point_pixels_is_named_as_such(tmp_path, keyword):
    # Was "DICOM file without pixel data (a report or structured document?)".
    path = write_dicom(tmp_path / "x.dcm", radiograph())
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.BitsAllocated = 32 if keyword == "FloatPixelData" else 64
    setattr(ds, keyword, np.ones(60 * 50, np.float32 if keyword == "FloatPixelData" else np.float64).tobytes())
    ds.save_as(str(tmp_path / "f.dcm"))
    with pytest.raises(dicom.DicomError, match=rf"^map\.dcm: DICOM {keyword} \(floating-point pixels\) is not a "):
        dicom.read_gray(open(tmp_path / "f.dcm", "rb").read(), "map.dcm")


def test_dicom_pixel_data_longer_than_its_one_frame_reads_that_frame(tmp_path):
    # pydicom decoded the extra bytes as a second frame, then the windowing failed on the (2, H, W)
    # array with "bad DICOM modality/VOI LUT (could not broadcast ...)".
    image = radiograph()
    single = write_dicom(tmp_path / "one.dcm", image)
    padded = write_dicom(tmp_path / "two.dcm", image, pixel_data=image.tobytes() * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the excess frames
        read = dicom.read_gray(open(padded, "rb").read(), "two.dcm")
    np.testing.assert_array_equal(read, dicom.read_gray(open(single, "rb").read(), "one.dcm"))


def test_a_damaged_compressed_dicom_frame_is_one_line_without_a_traceback(tmp_path, caplog):
    # An RLE header of one segment where a 16-bit image needs two: pydicom's decoder fails on the data.
    frame = struct.pack("<16I", 1, 64, *([0] * 14)) + b"\x80" * 100
    path = write_dicom(tmp_path / "d.dcm", radiograph(), transfer_syntax=RLELossless, pixel_data=encapsulate([frame]))
    with caplog.at_level(logging.WARNING), pytest.raises(imaging.BadImageError) as info:
        imaging.decode_file(open(path, "rb").read(), path)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot decode the first compressed DICOM frame (RLE Lossless): ")
    assert "number of RLE segments" in message and "\n" not in message
    assert "install a pydicom decoder" not in message  # the decoder is there; the frame is damaged
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []  # pydicom's traceback
