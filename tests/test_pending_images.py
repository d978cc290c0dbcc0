"""Image decoding gaps left by the hostile rounds: wording, warnings that named no file, JPEG metadata.

Each refusal is one line naming the file and what is wrong with it: a JPEG of a coding libjpeg
does not decode names its coding (not "corrupt"), a TIFF of samples Pillow does not read names
them (not "not an image"), and a DICOM file whose TransferSyntaxUID states the wrong byte order
says so (not "without pixel data"). What Pillow, pydicom and numpy warn while reading a file is
logged once, after the file's name. A JPEG's APPn segments are bounded before Pillow parses them.
"""

import concurrent.futures
import io
import logging
import struct
import threading
import warnings

import numpy as np
import pydicom
import pytest
from dicom_fixtures import radiograph, write_dicom
from PIL import Image
from pydicom.uid import ExplicitVRBigEndian

from effnet_jax.data import imaging
from effnet_jax.inference.inputs import expand_inputs

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


def _read(path) -> bytes:
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


def _float_tiff(**inline_shorts: int) -> bytes:
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
        imaging.decode_file(_float_tiff(**tags), "f.tif")
    assert str(refusal.value) == (
        f"f.tif: a TIFF of {samples}, which Pillow does not read; save it as 8- or 16-bit integers or 32-bit floats"
    )


def test_a_tiff_of_a_compression_pillow_does_not_read_names_it():
    with pytest.raises(imaging.BadImageError) as refusal:
        imaging.decode_file(_float_tiff(Compression=34712), "j.tif")  # JPEG 2000
    assert str(refusal.value) == (
        "j.tif: a TIFF of compression 34712, which Pillow does not read; save it uncompressed or with LZW, Deflate "
        "or JPEG compression"
    )


def test_a_32_bit_float_tiff_still_decodes():
    assert imaging.decode_file(_float_tiff(), "f.tif").size == (4, 3)


# --- DICOM byte order --------------------------------------------------------------------------------------


def _big_endian_dicom(tmp_path, pixels) -> bytes:
    path = write_dicom(tmp_path / "be.dcm", pixels, transfer_syntax=ExplicitVRBigEndian, pixel_data=b"")
    ds = pydicom.dcmread(path)
    ds.PixelData = pixels.astype(">u2").tobytes()  # pydicom writes pixel bytes as given
    ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)
    return _read(path)


def test_a_big_endian_dicom_decodes_as_its_little_endian_twin(tmp_path):
    pixels = radiograph()
    little = _read(write_dicom(tmp_path / "le.dcm", pixels))
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
    little = _read(write_dicom(tmp_path / "le.dcm", radiograph()))
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
        imaging.decode_file(_read(path), "r.dcm")
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
        read = imaging.decode_file(_read(path), "two.dcm")
    np.testing.assert_array_equal(np.asarray(read), np.asarray(imaging.decode_file(_read(single), "1")))
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
            imaging.decode_file(_read(path), "o.dcm")
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
