"""A zip's central directory is read from its end record and bounded before ``zipfile`` builds an object per member.

Every reader of a downloaded zip (a data set zip, a ``.pth``, a MedMNIST ``.npz``, an exported
``weights.npz``) refuses one listing more members than it may hold, naming the file, before
memory grows; the end record (zip64 included) is read as ``zipfile`` reads it.
"""

import io
import os
import struct
import tracemalloc
import zipfile

import data_fixtures as fx
import jax
import numpy as np
import pytest

from effnet_jax import limits, zip_directory
from effnet_jax.data import kermany
from effnet_jax.data.builders.pneumonia_mnist import PneumoniaMnist
from effnet_jax.serving import ExportedModelError
from effnet_jax.serving import model as serving_model
from effnet_jax.weights import WeightFileError, read_weights

MANY = 200_000  # empty members: listing them takes zipfile about 100 MB
PEAK_LIMIT = 50 << 20


def _zip_bytes(names, *, entries=None, size=None, zip64=False, comment=b"", prefix=b"") -> bytes:
    """A zip of empty stored members called ``names``; its end record may declare other ``entries`` or ``size``."""
    local, central = bytearray(), bytearray()
    for name in names:
        encoded = name.encode()
        central += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, len(encoded), 0, 0, 0, 0, 0, len(local)
        )
        central += encoded
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(encoded), 0) + encoded
    entries = len(names) if entries is None else entries
    size = len(central) if size is None else size
    end = b""
    if zip64 or entries >= 0xFFFF:  # as zipfile writes them
        record_at = len(local) + len(central)
        end += struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, size, len(local))
        end += struct.pack("<4sLQL", b"PK\x06\x07", 0, record_at, 1)
        entries, size, offset = 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF
    else:
        offset = len(local)
    end += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries, size, offset, len(comment)) + comment
    return prefix + bytes(local + central) + end


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _names(n):
    return [f"{i:x}" for i in range(n)]


def _peak_while(fn):
    """The exception ``fn()`` raises and the most memory Python allocated meanwhile."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            fn()
        return info.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _one_line_naming(error, path) -> str:
    message = str(error)
    assert message.startswith(str(path)) and "\n" not in message, message
    return message


def _weights_headers(path, arrays=2):
    avals = [jax.ShapeDtypeStruct((3,), np.float32)] * arrays
    with open(path, "rb") as f:
        serving_model.check_weights_headers(f, str(path), avals)


def _pytorch(path):
    read_weights(path)


def _medmnist(path):
    return PneumoniaMnist._load(path, 28)


def _kermany(path):
    kermany.scan(path)


# --- the end record, read as zipfile reads it ------------------------------------------------------


def _directory(data: bytes) -> zip_directory.ZipDirectory:
    return zip_directory.read(io.BytesIO(data), "test.zip")


def _agrees_with_zipfile(data: bytes) -> zip_directory.ZipDirectory:
    directory = _directory(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert directory.entries == len(archive.infolist())
        assert directory.start == archive.start_dir
    return directory


def test_a_plain_zip_and_one_with_a_comment_read_as_zipfile_reads_them():
    for comment in (b"", b"a comment naming PK\x05 in passing " * 200, b"x" * 0xFFFF):
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as archive:
            archive.comment = comment
            for i in range(5):
                archive.writestr(f"dir/member_{i}.txt", b"data" * i)
        directory = _agrees_with_zipfile(out.getvalue())
        assert directory.entries == 5 and not directory.zip64


def test_a_zip64_end_record_is_read(monkeypatch):
    # zipfile writes the zip64 end records from this many members on (65,535 as released).
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 3)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.comment = b"after the zip64 records"
        for i in range(7):
            archive.writestr(f"m{i}", b"x")
    monkeypatch.undo()
    assert b"PK\x06\x06" in out.getvalue()
    directory = _agrees_with_zipfile(out.getvalue())
    assert directory.entries == 7 and directory.zip64


def test_a_zip_of_more_members_than_the_32_bit_count_holds_is_counted_from_its_zip64_record():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for i in range(0x10000 + 5):
            archive.writestr(f"{i}", b"")
    directory = _agrees_with_zipfile(out.getvalue())
    assert directory.entries == 0x10000 + 5 and directory.zip64


def test_crafted_zip64_records_and_data_before_the_zip_are_read():
    _agrees_with_zipfile(_zip_bytes(_names(10), zip64=True))
    directory = _agrees_with_zipfile(_zip_bytes(_names(10), prefix=b"#!/bin/sh\nexit 0\n"))
    assert directory.start > directory.offset  # zipfile finds the directory past the prefix


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "no zip end record"),
        (b"plain text, not a zip" * 100, "no zip end record"),
        (_zip_bytes(_names(3))[:-5], "the zip end record is cut short"),
        (_zip_bytes(_names(3))[:-30], "no zip end record"),
        (_zip_bytes(_names(3), size=1 << 40, zip64=True), "a central directory of 1,099,511,627,776 bytes"),
        (_zip_bytes(_names(3), size=10_000), "a central directory of 10,000 bytes, more than the"),
    ],
    ids=["empty", "text", "end-record-cut", "truncated", "zip64-directory-past-start", "directory-past-start"],
)
def test_a_missing_or_corrupt_end_record_is_one_line_naming_the_file(data, reason):
    with pytest.raises(zip_directory.ZipDirectoryError) as info:
        _directory(data)
    assert reason in _one_line_naming(info.value, "test.zip")


def test_a_zip64_locator_without_its_record_is_refused():
    data = bytearray(_zip_bytes(_names(3), zip64=True))
    record = data.rfind(b"PK\x06\x06")
    data[record : record + 4] = b"XXXX"
    with pytest.raises(zip_directory.ZipDirectoryError, match="test.zip: a zip64 end locator without its zip64 end"):
        _directory(bytes(data))


# --- each reader refuses a zip listing too many members, before memory grows -------------------------

READERS = {
    "pytorch": (_pytorch, "model.pth", WeightFileError),
    "medmnist": (_medmnist, "pneumoniamnist.npz", ValueError),
    "kermany": (_kermany, "chest_xray.zip", kermany.LayoutError),
    "serving": (_weights_headers, "weights.npz", ExportedModelError),
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_small_zip_declaring_fifty_million_members_is_refused_naming_the_file(reader, tmp_path):
    read, name, error = READERS[reader]
    path = _write(tmp_path / name, _zip_bytes(_names(2), entries=50_000_000, zip64=True))
    with pytest.raises(error) as info:
        read(path)
    message = _one_line_naming(info.value, path)
    assert "50,000,000" in message or "50000000" in message, message


@pytest.fixture(scope="module")
def many_members(tmp_path_factory) -> bytes:
    return _zip_bytes(_names(MANY))


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_zip_of_200k_empty_members_is_refused_before_zipfile_lists_them(reader, many_members, tmp_path, monkeypatch):
    # A budget below what their objects take: a data set zip has no member count of its own to refuse.
    monkeypatch.setenv(limits.ENV_VAR, "64M")
    read, name, error = READERS[reader]
    path = _write(tmp_path / name, many_members)
    refused, peak = _peak_while(lambda: read(path))
    assert isinstance(refused, error)
    assert f"{MANY:,}" in _one_line_naming(refused, path) or str(MANY) in str(refused)
    assert peak < PEAK_LIMIT, f"{peak:,} bytes allocated"


def test_a_directory_of_many_more_members_than_its_end_record_counts_is_held_to_the_budget(
    many_members, tmp_path, monkeypatch
):
    # zipfile reads entries until the directory's bytes run out, whatever count the end record gives.
    monkeypatch.setenv(limits.ENV_VAR, "64M")
    path = _write(tmp_path / "pneumoniamnist.npz", _zip_bytes(_names(MANY), entries=6))
    refused, peak = _peak_while(lambda: _medmnist(path))
    message = _one_line_naming(refused, path)
    assert "the zip directory of a MedMNIST .npz (6 members declared in" in message
    assert "over the decoded-size budget" in message
    assert peak < PEAK_LIMIT, f"{peak:,} bytes allocated"


def test_member_counts_of_their_own_bound_checkpoints_and_medmnist_files(tmp_path):
    path = _write(tmp_path / "model.pth", _zip_bytes(_names(70_000)))
    with pytest.raises(
        WeightFileError, match="a zip listing 70,000 members; a PyTorch checkpoint holds at most 65,536"
    ):
        read_weights(path)
    path = _write(tmp_path / "pneumoniamnist.npz", _zip_bytes(_names(17)))
    with pytest.raises(ValueError, match="a zip listing 17 members; a MedMNIST .npz holds at most 16"):
        _medmnist(path)


def test_exported_weights_keep_their_own_messages(tmp_path):
    path = _write(tmp_path / "weights.npz", b"not a zip at all")
    with pytest.raises(ExportedModelError, match=r"weights.npz: not an \.npz archive \(no zip end record"):
        _weights_headers(path)
    path = _write(tmp_path / "weights.npz", _zip_bytes(_names(3)))
    with pytest.raises(ExportedModelError, match="weights.npz: holds 3 arrays, the function takes 2$"):
        _weights_headers(path)


# --- what the readers still read -----------------------------------------------------------------


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_kermany_zip_still_scans_reads_and_closes_its_file(tmp_path):
    good = fx.write_tree(tmp_path / "tree", fx.GOOD_TREE)
    path = fx.zip_tree(good, tmp_path / "chest_xray.zip")
    before = _open_descriptors()
    layout = kermany.scan(path)
    rel = layout.files["train"][0][1]
    assert layout.read(rel) == zipfile.ZipFile(path).read(rel)
    assert layout.fingerprint().startswith(kermany.FINGERPRINT_SCHEME)
    layout.close()
    assert _open_descriptors() == before


def test_a_medmnist_npz_still_loads(tmp_path):
    arrays = fx.write_mnist_npz(tmp_path / "pneumoniamnist.npz", size=28)
    before = _open_descriptors()
    loaded = _medmnist(tmp_path / "pneumoniamnist.npz")
    np.testing.assert_array_equal(loaded["train"][0], arrays["train_images"])
    assert _open_descriptors() == before


def test_a_torch_checkpoint_still_reads(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pth"
    torch.save({"conv_stem.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, path)
    tensors, _ = read_weights(path)
    np.testing.assert_array_equal(tensors["conv_stem.weight"], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_a_refused_zip_leaves_no_file_open(tmp_path):
    path = _write(tmp_path / "chest_xray.zip", _zip_bytes(_names(2), entries=50_000_000, zip64=True))
    before = _open_descriptors()
    with pytest.raises(kermany.LayoutError):
        zip_directory.open_zip(path, what="a data set zip", error=kermany.LayoutError)
    assert _open_descriptors() == before
