"""Small files that declare huge contents, and containers that point outside themselves.

Each case is a file crafted here, a few MB at most, and asserts what docs/untrusted-inputs.md
("Decoded-size budget and containers") promises: the reader refuses it with one line naming
the file, from what the file declares, before decoding it. ``test_bombs_stay_within_the_address_space_limit``
reads the largest of them in a process whose address space may grow by 1 GiB at most.
"""

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tracemalloc
import zipfile
import zlib

import numpy as np
import pydicom
import pytest
from dicom_fixtures import radiograph, write_dicom
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless
from test_hostile_inputs import _LEGACY_MAGIC, _raw_zip, _StorageRef, _Tensor, _TorchPickler, _write_pth

from effnet_jax import limits
from effnet_jax.data import dicom, imaging
from effnet_jax.weights import WeightFileError, read_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_line_naming(error, path) -> str:
    message = str(error)
    assert message.startswith(str(path)) and "\n" not in message, message
    return message


def _refused_by_budget(error, path) -> None:
    assert "over the decoded-size budget" in _one_line_naming(error, path)


@pytest.fixture
def small_budget(monkeypatch):
    """A 16 MiB budget, so that files of a few hundred KB can exceed it."""
    monkeypatch.setenv(limits.ENV_VAR, "16M")
    return 16 << 20


# --- the setting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,expected", [(None, 512 << 20), ("", 512 << 20), ("1000", 1000), ("64M", 64 << 20), ("2G", 2 << 30)]
)
def test_the_budget_is_an_environment_setting(value, expected):
    environ = {} if value is None else {limits.ENV_VAR: value}
    assert limits.budget(environ) == expected


def test_real_radiographs_and_weights_fit_the_default_budget():
    budget = limits.DEFAULT_BUDGET
    assert 2 * dicom.decode_bytes(4000, 4000, 1, 16, compressed=True) < budget  # a large 16-bit DX, RLE
    assert 2 * imaging.decode_bytes("RGB", 3000, 3000) < budget  # a colour JPEG of a film
    assert 2 * imaging.decode_bytes("I;16", 4000, 4000) < budget  # a 16-bit PNG or TIFF
    assert 66_347_960 * 4 < budget  # EfficientNet-B7's parameters in float32


@pytest.mark.parametrize("value", ["lots", "-5", "0", "1.5G"])
def test_a_bad_budget_setting_is_one_line_naming_the_variable(value):
    with pytest.raises(limits.BudgetError, match=f"^{limits.ENV_VAR}="):
        limits.budget({limits.ENV_VAR: value})


# --- DICOM ---------------------------------------------------------------------------------------


def _rle_bomb(path, side: int = 13000) -> str:
    """A 16-bit RLE DICOM of side x side pixels (338 MB decoded), each byte plane one run of zeros (5.3 MB)."""
    plane = side * side
    segment = b"\x81\x00" * (plane // 128) + b"\x00\x00" * (plane % 128 > 0)  # 128 zeros per 2 bytes
    header = struct.pack("<16L", 2, 64, 64 + len(segment), *([0] * 13))
    frame = header + segment + segment
    pixels = np.broadcast_to(np.uint16(0), (side, side))  # its shape only: no memory
    return write_dicom(path, pixels, transfer_syntax=RLELossless, pixel_data=encapsulate([frame]))


def _deflated_bomb(path, inflated: int = 3 << 30, rows: int = 16) -> str:
    """A Deflated-syntax DICOM whose 16x16 image carries `inflated` bytes of pixel data once inflated."""
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = pydicom.dataset.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = rows
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    body = pydicom.filebase.DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(body, ds)
    head = pydicom.filebase.DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    pydicom.filewriter.write_file_meta_info(head, meta)
    chunk = 1 << 24
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = z.compress(body.getvalue() + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<L", inflated))
    start += z.flush(zlib.Z_FULL_FLUSH)
    block = z.compress(bytes(chunk)) + z.flush(zlib.Z_FULL_FLUSH)  # after a full flush, each chunk is the same
    with open(path, "wb") as f:
        f.write(b"\x00" * 128 + b"DICM" + head.getvalue() + start + block * (inflated // chunk) + z.flush())
    return str(path)


def _read(path):
    with open(path, "rb") as f:
        return imaging.decode_file(f.read(), str(path))


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
    path = _rle_bomb(tmp_path / "rle.dcm")
    data = open(path, "rb").read()
    assert len(data) < 6 << 20
    error, peak = _refusal_and_peak(data, path)
    _refused_by_budget(error, path)
    assert "13000x13000x1 samples at 16 bits" in str(error)
    assert peak < 3 * len(data), f"{peak:,} bytes allocated"  # the parsed file, not its pixels


def test_a_deflated_dicom_is_inflated_no_further_than_the_budget(tmp_path, small_budget):
    path = _deflated_bomb(tmp_path / "deflated.dcm", inflated=64 << 20)
    data = open(path, "rb").read()
    error, peak = _refusal_and_peak(data, path)
    _refused_by_budget(error, path)
    assert "deflated DICOM dataset" in str(error)
    assert peak < 4 << 20, f"{peak:,} bytes allocated"


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
    assert "an RLE segment of the first DICOM frame decodes to more than the 4,096 bytes" in _one_line_naming(
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
    assert "the first compressed DICOM frame declares 640x480 pixels" in _one_line_naming(info.value, path)


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


# --- images --------------------------------------------------------------------------------------


def _png_header(path, width: int, height: int, color_type: int = 6) -> str:
    """A PNG whose header declares width x height (RGBA by default), with one tiny IDAT: Pillow opens it lazily."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">L", len(body)) + kind + body + struct.pack(">L", zlib.crc32(kind + body))

    ihdr = struct.pack(">2L5B", width, height, 8, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)))
        f.write(chunk(b"IEND", b""))
    return str(path)


def test_an_image_header_declaring_more_than_the_budget_is_refused_before_decoding(tmp_path):
    path = _png_header(tmp_path / "huge.png", 9000, 9000)
    with pytest.raises(imaging.BadImageError) as info:
        _read(path)
    _refused_by_budget(info.value, path)
    assert "image of 9000x9000 pixels in mode RGBA" in str(info.value)


def test_a_float_tiff_over_the_budget_is_refused_and_one_within_it_reads(tmp_path, small_budget):
    big, small = tmp_path / "big.tif", tmp_path / "small.tif"
    Image.fromarray(np.zeros((1000, 800), np.float32)).save(big)
    Image.fromarray(np.linspace(0, 1, 60 * 50, dtype=np.float32).reshape(60, 50)).save(small)
    with pytest.raises(imaging.BadImageError) as info:
        _read(big)
    _refused_by_budget(info.value, big)
    assert "mode F" in str(info.value)
    assert _read(small).size == (50, 60)


def test_the_eda_scan_holds_images_to_the_budget(tmp_path):
    from effnet_jax.data.eda import scan

    path = _png_header(tmp_path / "huge.png", 9000, 9000)
    with pytest.raises(imaging.BadImageError) as info:
        scan._decode(open(path, "rb").read(), path)
    _refused_by_budget(info.value, path)


def test_a_medmnist_npz_declaring_more_than_the_budget_is_refused_before_reading(tmp_path):
    from effnet_jax.data.builders.pneumonia_mnist import PneumoniaMnist

    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = z.compress(bytes(1 << 24)) + z.flush(zlib.Z_FULL_FLUSH)
    payload = payload * 48 + z.flush()  # 768 MiB of zeros
    path = _raw_zip(tmp_path / "pneumoniamnist.npz", [("train_images.npy", zipfile.ZIP_DEFLATED, payload, 0, 3 << 28)])
    with pytest.raises(ValueError) as info:
        PneumoniaMnist._load(path, 28)
    _refused_by_budget(info.value, path)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32])
def test_high_bit_depth_images_scale_by_blocks_as_a_whole(dtype, monkeypatch):
    rng = np.random.default_rng(0)
    arr = (rng.normal(0, 1000, (61, 53)) + (3000 if dtype == np.uint16 else 0)).astype(dtype)
    monkeypatch.setattr(imaging, "BLOCK_PIXELS", 3 * 53)
    wide = arr.astype(np.float64)
    lo, hi = wide.min(), wide.max()
    expected = np.round((wide - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(imaging.to_gray(Image.fromarray(arr))), expected)


# --- predict and serving inputs ------------------------------------------------------------------


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
        assert "2,147,483,648 bytes, larger than the 134,217,728 accepted" in _one_line_naming(error, path)
    assert peak < 1 << 20, f"{peak:,} bytes allocated"


# --- exported folders ----------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [40, 100_000])
def test_a_deeply_nested_model_json_is_one_line(depth, tmp_path):
    from effnet_jax.serving import bundle

    (tmp_path / "model.json").write_text("[" * depth + "]" * depth)
    with pytest.raises(bundle.ExportedModelError) as info:
        bundle.read_model_json(str(tmp_path))
    assert "JSON nested deeper than 32 levels" in _one_line_naming(info.value, tmp_path / "model.json")


def test_a_sparse_model_json_is_refused_from_its_size(tmp_path):
    from effnet_jax.serving import bundle

    with open(tmp_path / "model.json", "wb") as f:
        f.truncate(2 << 30)
    with pytest.raises(bundle.ExportedModelError, match="model.json: 2147483648 bytes, more than the 1048576"):
        bundle.read_model_json(str(tmp_path))


def test_exported_weights_declaring_more_than_the_budget_are_refused_before_reading():
    import jax

    from effnet_jax.serving import ExportedModelError
    from effnet_jax.serving import model as serving_model

    avals = [jax.ShapeDtypeStruct((3,), np.float32), jax.ShapeDtypeStruct((1 << 30,), np.float32)]
    with pytest.raises(ExportedModelError) as info:
        serving_model._read_weights("DIR/weights.npz", b"not even a zip", avals)
    _refused_by_budget(info.value, "DIR/weights.npz")


# --- .pth ----------------------------------------------------------------------------------------


def _zip_pth(path, pickle_bytes: bytes, members=()) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        for name, raw in members:
            archive.writestr(f"archive/data/{name}", raw)
    return str(path)


def _laughs(levels: int) -> bytes:
    """{'a': L, 'b': L} for L the level below, `levels` deep, each level a memo reference: 2**levels leaves."""
    out = b"\x80\x02}q\x00X\x01\x00\x00\x00aK\x01s"
    for i in range(1, levels + 1):
        out += b"}r" + struct.pack("<L", i) + b"(X\x01\x00\x00\x00aj" + struct.pack("<L", i - 1)
        out += b"X\x01\x00\x00\x00bj" + struct.pack("<L", i - 1) + b"u"
    return out + b"."


def test_a_billion_laughs_pickle_is_walked_once_per_object(tmp_path):
    shallow = _zip_pth(tmp_path / "laughs30.pth", _laughs(30))  # 2**30 paths, 31 objects
    assert read_weights(shallow) == ({}, "pytorch")
    deep = _zip_pth(tmp_path / "laughs40.pth", _laughs(40))
    with pytest.raises(WeightFileError) as info:
        read_weights(deep)
    assert "dicts nested deeper than 32 levels" in _one_line_naming(info.value, deep)


@pytest.mark.parametrize(
    "name,body",
    [
        # {{{...}}} a hundred thousand dicts deep, each set in the one above.
        ("dicts", b"}X\x01\x00\x00\x00a" * 100_000 + b"}" + b"s" * 100_000),
        # A dict keyed by a tuple nested a million deep: hashing it would overflow the C stack.
        ("tuple_key", b"})" + b"\x85" * 1_000_000 + b"Ns"),
    ],
    ids=["dicts", "tuple_key"],
)
def test_deeply_nested_pickles_are_one_line(name, body, tmp_path):
    path = _zip_pth(tmp_path / f"{name}.pth", b"\x80\x02" + body + b".")
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    assert "nests objects deeper than 32 levels" in _one_line_naming(info.value, path)


@pytest.mark.parametrize(
    "name,body,why",
    [
        # One memo slot at index two billion: the unpickler would size its memo to match.
        ("memo", b"]r" + struct.pack("<L", 2_000_000_000), "over the decoded-size budget"),
        # A bytes object declaring a TiB: the unpickler would allocate it before reading.
        ("bytes8", b"\x8e" + struct.pack("<Q", 1 << 40) + b"abc", "is not a complete pickle"),
    ],
    ids=["memo", "bytes8"],
)
def test_pickles_declaring_huge_allocations_are_refused_before_unpickling(name, body, why, tmp_path):
    path = _zip_pth(tmp_path / f"{name}.pth", b"\x80\x04" + body + b".")
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    assert why in _one_line_naming(info.value, path)


def _storage_pickle(numel: int, size=None, stride=None) -> bytes:
    size = (numel,) if size is None else size
    stride = (1,) * len(size) if stride is None else stride
    body = io.BytesIO()
    _TorchPickler(body, legacy=False).dump({"w": _Tensor(_StorageRef("0", numel), 0, size, stride)})
    return body.getvalue()


def _deflated_storage_members(numel: int, payload: bytes) -> list:
    """Zip members of a .pth whose one storage of `numel` float32 is stored as `payload`, deflated."""
    pkl = _storage_pickle(numel)
    return [
        ("archive/data.pkl", zipfile.ZIP_STORED, pkl, zlib.crc32(pkl), len(pkl)),
        ("archive/data/0", zipfile.ZIP_DEFLATED, payload, 0, 4 * numel),  # its CRC is never reached
    ]


def test_a_deflated_storage_declaring_more_than_the_budget_is_refused_before_inflating(tmp_path):
    numel = 3 << 27  # 1.5 GiB of float32, deflated to 1.5 MB
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = z.compress(bytes(1 << 24)) + z.flush(zlib.Z_FULL_FLUSH)
    payload = block * (4 * numel >> 24) + z.flush()
    path = _raw_zip(tmp_path / "deflated.pth", _deflated_storage_members(numel, payload))
    assert path.stat().st_size < 2 << 20
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    _refused_by_budget(info.value, path)


def test_a_deflated_data_pkl_larger_than_a_pickle_may_be_is_refused_before_inflating(tmp_path):
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = z.compress(bytes(64 << 20)) + z.flush()
    path = _raw_zip(tmp_path / "pkl.pth", [("archive/data.pkl", zipfile.ZIP_DEFLATED, payload, 0, 64 << 20)])
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    assert "archive/data.pkl declares 67,108,864 bytes, more than the 16,777,216" in _one_line_naming(info.value, path)


def _legacy(path, numel: int, stored: bytes, size=None, stride=None) -> str:
    """A legacy .pth whose one storage declares `numel` float32 and holds `stored` after its count."""
    with open(path, "wb") as f:
        for field in (_LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(field, f, protocol=2)
        state = {"w": _Tensor(_StorageRef("0", numel), 0, (numel,) if size is None else size, stride or (1,))}
        _TorchPickler(f, legacy=True).dump(state)
        pickle.dump(["0"], f, protocol=2)
        f.write(struct.pack("<q", numel) + stored)
    return str(path)


def test_a_legacy_count_beyond_the_budget_is_refused_before_reading(tmp_path):
    path = _legacy(tmp_path / "legacy.pth", 1 << 40, b"\x00" * 16)
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    _refused_by_budget(info.value, path)


def test_a_legacy_count_beyond_the_file_is_compared_with_its_size_before_reading(tmp_path):
    path = _legacy(tmp_path / "legacy.pth", 1 << 20, b"\x00" * 16)
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    assert "storage 0 declares 4,194,304 bytes, the file holds 16 after it" in _one_line_naming(info.value, path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_huge_stride_over_a_dimension_of_one_is_ignored(legacy, tmp_path):
    values = np.arange(4, dtype=np.float32)
    state = {"w": _Tensor(_StorageRef("0", 4), 0, (1, 4), (1 << 62, 1))}
    tensors, _ = read_weights(_write_pth(tmp_path / "one.pth", state, {"0": values.tobytes()}, legacy))
    np.testing.assert_array_equal(tensors["w"], values[None])


@pytest.mark.parametrize(
    "size,stride,why",
    [((2, 2), (1 << 62, 1), "beyond its storage"), ((0, 1 << 64), (1, 1), "beyond 64-bit integers")],
    ids=["stride", "empty"],
)
def test_overflowing_sizes_and_strides_are_one_line(size, stride, why, tmp_path):
    state = {"w": _Tensor(_StorageRef("0", 4), 0, size, stride)}
    path = _write_pth(tmp_path / "overflow.pth", state, {"0": np.ones(4, np.float32).tobytes()}, legacy=False)
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    assert why in _one_line_naming(info.value, path)


def test_non_contiguous_views_count_their_copies(tmp_path, small_budget):
    # 1,000 transposed views of one 1 MiB storage: each a 1 MiB copy, 1,000 MiB in all.
    storage = _StorageRef("0", 1 << 18)
    state = {f"w{i}": _Tensor(storage, 0, (512, 512), (1, 512)) for i in range(1000)}
    path = _write_pth(tmp_path / "views.pth", state, {"0": bytes(1 << 20)}, legacy=False)
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    _refused_by_budget(info.value, path)
    assert "1 tensor storages and 1000 tensors" in str(info.value)


# --- safetensors ---------------------------------------------------------------------------------


def _safetensors(path, header, data: bytes = b"") -> str:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)
    return str(path)


@pytest.mark.parametrize(
    "header,data,why",
    [
        ({"w": {"dtype": "F32", "shape": [1 << 28], "data_offsets": [0, 1 << 30]}}, b"\x00" * 16, "the file holds 16"),
        (b"[" * 100_000 + b"]" * 100_000, b"", "bad JSON header"),
        (b"{}", None, "its header declares"),
    ],
    ids=["more-than-the-file", "nested-header", "header-past-the-end"],
)
def test_safetensors_headers_are_checked_against_the_file(header, data, why, tmp_path):
    path = tmp_path / "w.safetensors"
    if data is None:  # a header length pointing a GB past the end of the file
        path.write_bytes(struct.pack("<Q", 1 << 30) + b"{}")
    else:
        _safetensors(path, header, data)
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    assert str(path) in str(info.value) and why in str(info.value) and "\n" not in str(info.value)


def test_safetensors_declaring_more_than_the_budget_is_refused(tmp_path, small_budget):
    n = 5 << 20  # 20 MiB of float32, present in the (sparse) file
    path = _safetensors(tmp_path / "w.safetensors", {"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}})
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) + 4 * n)
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    _refused_by_budget(info.value, path)


# --- Keras HDF5 ----------------------------------------------------------------------------------


def _keras_h5(path, make_weight, weight_name: str = "kernel:0") -> str:
    """A Keras weights file with one layer 'stem_conv' whose one weight `make_weight(group, name)` writes."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"stem_conv"]
        group = f.create_group("stem_conv")
        group.attrs["weight_names"] = [weight_name.encode()]
        make_weight(f, group, weight_name)
    return str(path)


def _gzip_chunks(group, name, shape, chunk):
    """A gzip dataset of `shape` float32 zeros whose every chunk is written, compressed, by hand."""
    z = zlib.compress(bytes(4 * int(np.prod(chunk))), 9)
    dataset = group.create_dataset(name, shape=shape, dtype=np.float32, chunks=chunk, compression="gzip")
    for offset in np.ndindex(*(s // c for s, c in zip(shape, chunk))):
        dataset.id.write_direct_chunk(tuple(o * c for o, c in zip(offset, chunk)), z)


def test_a_keras_file_within_the_rules_reads(tmp_path):
    path = _keras_h5(tmp_path / "ok.h5", lambda f, g, n: g.create_dataset(n, data=np.arange(6.0).reshape(2, 3)))
    tensors, fmt = read_weights(path)
    assert fmt == "keras_h5" and list(tensors) == ["stem_conv/kernel"]
    np.testing.assert_array_equal(tensors["stem_conv/kernel"], np.arange(6.0).reshape(2, 3))


def test_a_soft_link_to_a_dataset_in_the_file_reads(tmp_path):
    import h5py

    def make(f, group, name):
        f.create_dataset("real", data=np.ones(3, np.float32))
        group[name] = h5py.SoftLink("/real")

    tensors, _ = read_weights(_keras_h5(tmp_path / "soft.h5", make))
    np.testing.assert_array_equal(tensors["stem_conv/kernel"], np.ones(3, np.float32))


def test_hdf5_datasets_declaring_more_than_the_budget_are_refused_before_reading(tmp_path):
    fill = _keras_h5(
        tmp_path / "fill.h5", lambda f, g, n: g.create_dataset(n, shape=(1 << 30,), dtype=np.float32, fillvalue=1.0)
    )
    gzip = _keras_h5(tmp_path / "gzip.h5", lambda f, g, n: _gzip_chunks(g, n, (16384, 16384), (2048, 2048)))
    assert os.path.getsize(fill) < 16 << 10 and os.path.getsize(gzip) < 2 << 20
    for path, shape in ((fill, "float32(1073741824,)"), (gzip, "float32(16384, 16384)")):
        with pytest.raises(WeightFileError) as info:
            read_weights(path)
        _refused_by_budget(info.value, path)
        assert f"the largest '/stem_conv/kernel:0' of {shape}" in str(info.value)


def test_a_gzip_chunk_inflating_past_its_size_is_counted(tmp_path, small_budget):
    # A 4 KiB dataset in one chunk whose stored stream inflates to 64 MiB.
    def make(f, group, name):
        dataset = group.create_dataset(name, shape=(1024,), dtype=np.float32, chunks=(1024,), compression="gzip")
        dataset.id.write_direct_chunk((0,), zlib.compress(bytes(64 << 20), 9))

    path = _keras_h5(tmp_path / "chunk.h5", make)
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    _refused_by_budget(info.value, path)


def _external_storage(f, group, name, secret):
    group.create_dataset(name, shape=(4,), dtype=np.float32, external=[(str(secret), 0, 16)])


def _virtual(f, group, name, other):
    import h5py

    layout = h5py.VirtualLayout(shape=(3,), dtype=np.float32)
    layout[:] = h5py.VirtualSource(str(other), "x", shape=(3,))
    group.create_virtual_dataset(name, layout)


@pytest.mark.parametrize(
    "case,why",
    [
        ("external_storage", "HDF5 object '/stem_conv/kernel:0' keeps its data in external files"),
        ("external_link", "HDF5 link '/stem_conv/kernel:0' is an external link to '{other}:/x'"),
        ("external_root", "HDF5 link '/model_weights' is an external link to '{other}:/'"),
        ("soft_loop", "HDF5 link '/stem_conv/kernel:0' is a soft link to '/stem_conv/kernel:0', another link"),
        ("soft_dangling", "HDF5 link '/stem_conv/kernel:0' is a soft link to '/nowhere', which does not exist"),
        ("virtual", "HDF5 object '/stem_conv/kernel:0' is a virtual dataset"),
        ("vlen", "HDF5 object '/stem_conv/kernel:0' has type object"),
        ("reference", "HDF5 object '/stem_conv/kernel:0' has type object"),
        ("compound", "HDF5 object '/stem_conv/kernel:0' has type [("),
    ],
)
def test_hdf5_files_never_reach_outside_themselves(case, why, tmp_path):
    import h5py

    secret, other = tmp_path / "secret.bin", tmp_path / "other.h5"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    with h5py.File(other, "w") as f:
        f["x"] = np.full(3, 7.0, np.float32)
    makers = {
        "external_storage": lambda f, g, n: _external_storage(f, g, n, secret),
        "external_link": lambda f, g, n: g.__setitem__(n, h5py.ExternalLink(str(other), "/x")),
        "external_root": lambda f, g, n: f.__setitem__("model_weights", h5py.ExternalLink(str(other), "/")),
        "soft_loop": lambda f, g, n: g.__setitem__(n, h5py.SoftLink("/stem_conv/kernel:0")),
        "soft_dangling": lambda f, g, n: g.__setitem__(n, h5py.SoftLink("/nowhere")),
        "virtual": lambda f, g, n: _virtual(f, g, n, other),
        "vlen": lambda f, g, n: g.create_dataset(n, data=[b"a"], dtype=h5py.vlen_dtype(bytes)),
        "reference": lambda f, g, n: g.create_dataset(n, data=[f.ref], dtype=h5py.ref_dtype),
        "compound": lambda f, g, n: g.create_dataset(n, shape=(2,), dtype=[("a", "f4"), ("b", "f4")]),
    }
    path = _keras_h5(tmp_path / f"{case}.h5", makers[case])
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    assert why.format(other=other) in _one_line_naming(info.value, path)


# --- the address space they may take --------------------------------------------------------------

_UNDER_A_LIMIT = """
import json, resource, sys
from effnet_jax.data import imaging
from effnet_jax.weights import read_weights
import h5py, pydicom.pixels

# What the imports took, plus 1 GiB: twice the default budget, far below what the bombs would take.
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), size + (1 << 30)))
for path in sys.argv[1:]:
    try:
        if path.endswith((".dcm", ".png")):
            with open(path, "rb") as f:
                imaging.decode_file(f.read(), path)
        else:
            read_weights(path)
        print(json.dumps([path, "read"]))
    except MemoryError:
        print(json.dumps([path, "MemoryError"]))
    except ValueError as e:
        print(json.dumps([path, str(e)]))
"""


def test_bombs_stay_within_the_address_space_limit(tmp_path):
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = z.compress(bytes(1 << 24)) + z.flush(zlib.Z_FULL_FLUSH)
    storage = block * 96 + z.flush()  # 1.5 GiB of zeros
    paths = [
        _rle_bomb(tmp_path / "rle.dcm"),
        _deflated_bomb(tmp_path / "deflated.dcm"),
        _png_header(tmp_path / "header.png", 9000, 9000),
        _keras_h5(
            tmp_path / "fill.h5", lambda f, g, n: g.create_dataset(n, shape=(1 << 30,), dtype=np.float32, fillvalue=1)
        ),
        _keras_h5(tmp_path / "gzip.h5", lambda f, g, n: _gzip_chunks(g, n, (16384, 16384), (2048, 2048))),
        _zip_pth(tmp_path / "laughs.pth", _laughs(40)),
        str(_raw_zip(tmp_path / "storage.pth", _deflated_storage_members(3 << 27, storage))),
        _legacy(tmp_path / "legacy.pth", 1 << 40, b"\x00" * 16),
        _zip_pth(tmp_path / "memo.pth", b"\x80\x02]r" + struct.pack("<L", 2_000_000_000) + b"."),
    ]
    assert all(os.path.getsize(p) < 6 << 20 for p in paths)
    proc = subprocess.run(
        [sys.executable, "-c", _UNDER_A_LIMIT, *paths],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": REPO, "OPENBLAS_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = dict(json.loads(line) for line in proc.stdout.splitlines())
    assert list(results) == paths
    for path, message in results.items():
        assert message.startswith(path) and "\n" not in message, (path, message)
        assert "budget" in message or "nested deeper" in message, (path, message)
