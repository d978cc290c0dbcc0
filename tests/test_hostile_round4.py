"""Hostile inputs, round 4: converted folders, zip members, exported functions, batch sizes, config keys.

Each case failed before the fix it names (a GB allocation from a folder of a few MB, a
traceback from zipfile, a prediction that never returned, a petabyte batch, a fork per unit
of a config value) and is asserted here as the documented behaviour (docs/untrusted-inputs.md).
"""

import hashlib
import json
import re
import shutil
import struct
import zipfile

import data_fixtures as fx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from effnet_jax.data import imaging, kermany
from effnet_jax.train.config import validate_config
from effnet_jax.weights import WeightFileError

# --- converted folders: the orbax metadata is held to the budget before orbax allocates -------------


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


# --- weight files named for a format they do not hold, and complex numbers -----------------------------


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


def test_complex_safetensors_weights_are_refused_naming_the_tensor(tmp_path):
    # Before: read, then cast to float32 by the loader, dropping the imaginary part without a word.
    from effnet_jax.weights import read_weights

    header = json.dumps({"conv_stem.weight": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "complex.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(WeightFileError, match=f"{path}: tensor 'conv_stem.weight' is complex64; weights are real"):
        read_weights(path)


# --- zip members zipfile cannot read, and member names that are not canonical ----------------------

MEMBER = "chest_xray/train/NORMAL/IM-0999-0001.jpeg"


def _zip_with(tmp_path, name, members, compression=zipfile.ZIP_STORED):
    good = fx.write_tree(tmp_path / "tree" / "chest_xray", fx.GOOD_TREE)
    path = fx.zip_tree(good, tmp_path / name)
    with zipfile.ZipFile(path, "a", compression=compression) as archive:
        for member, data in members:
            archive.writestr(member, data)
    return path


def _patch_headers(path, member, patch):
    """Applies ``patch(data, header_offset, is_local)`` to the local and central headers of ``member``."""
    data, key = bytearray(path.read_bytes()), member.encode()
    for signature, name_at, length_at in ((b"PK\x03\x04", 30, 26), (b"PK\x01\x02", 46, 28)):
        i = data.find(signature)
        while i >= 0:
            length = struct.unpack("<H", data[i + length_at : i + length_at + 2])[0]
            if bytes(data[i + name_at : i + name_at + length]) == key:
                patch(data, i, signature == b"PK\x03\x04")
            i = data.find(signature, i + 4)
    path.write_bytes(bytes(data))
    return path


def _encrypted(data, at, local):
    data[at + (6 if local else 8)] |= 1


def _method_99(data, at, local):
    at += 8 if local else 10
    data[at : at + 2] = struct.pack("<H", 99)


def _corrupt_payload(path, member):
    data = bytearray(path.read_bytes())
    start = data.rfind(b"PK\x03\x04") + 30 + len(member) + 64
    data[start : start + 64] = bytes(b ^ 0xFF for b in data[start : start + 64])
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda p: _patch_headers(_zip_with(p, "enc.zip", [(MEMBER, fx.jpeg(7))]), MEMBER, _encrypted), "encrypted"),
        (
            lambda p: _patch_headers(_zip_with(p, "m99.zip", [(MEMBER, fx.jpeg(7))]), MEMBER, _method_99),
            "not supported",
        ),
        (
            lambda p: _corrupt_payload(
                _zip_with(p, "d.zip", [(MEMBER, fx.jpeg(7) * 40)], zipfile.ZIP_DEFLATED), MEMBER
            ),
            "decompressing",
        ),
        (
            lambda p: _corrupt_payload(_zip_with(p, "x.zip", [(MEMBER, fx.jpeg(7) * 40)], zipfile.ZIP_LZMA), MEMBER),
            "Corrupt input",
        ),
    ],
    ids=["encrypted", "method-99", "corrupt-deflate", "corrupt-lzma"],
)
def test_a_zip_member_zipfile_cannot_read_is_a_bad_image_naming_it(tmp_path, make, why):
    # Before: RuntimeError, NotImplementedError, zlib.error or LZMAError out of data preparation.
    layout = kermany.scan(make(tmp_path))
    try:
        with pytest.raises(imaging.BadImageError, match=f"{MEMBER}: cannot read: .*{why}"):
            layout.read(MEMBER)
    finally:
        layout.close()


@pytest.mark.parametrize(
    "name",
    [
        "/chest_xray/train/NORMAL/IM-0998-0001.jpeg",
        "chest_xray/train//NORMAL/IM-0997-0001.jpeg",
        "../chest_xray/train/NORMAL/IM-0996-0001.jpeg",
        "chest_xray/train/./NORMAL/IM-0995-0001.jpeg",
    ],
    ids=["absolute", "double-slash", "dot-dot", "dot"],
)
def test_a_non_canonical_member_name_is_a_listed_problem_not_a_traceback(tmp_path, name):
    # Before: '/a/b' and 'a//b' were listed as 'a/b', which zipfile does not hold: a KeyError.
    layout = kermany.scan(_zip_with(tmp_path, "odd.zip", [(name, fx.jpeg(3))]))
    try:
        assert any(
            p.endswith(f"{name}: an absolute or non-canonical member name ('..', '//'); not read")
            for p in layout.problems
        )
        listed = [rel for items in layout.files.values() for _, rel in items]
        assert len(listed) == sum(sum(c) for c in fx.GOOD_COUNTS.values())
        for rel in listed:
            layout.read(rel)
    finally:
        layout.close()


def test_preparing_a_zip_with_an_encrypted_member_skips_it_by_policy(tmp_path):
    from effnet_jax.data import prepare

    path = _patch_headers(_zip_with(tmp_path, "enc.zip", [(MEMBER, fx.jpeg(7))]), MEMBER, _encrypted)
    factory = prepare.BuilderFactory(
        name="chest_xray", manual_dir=str(path), data_dir=str(tmp_path / "tfds"), max_size=36, on_bad_image="skip"
    )
    builder = prepare.ensure_prepared(factory)
    assert builder.info.splits["train"].num_examples == sum(fx.GOOD_COUNTS["train"])
    assert any(MEMBER in s and "encrypted" in s for s in builder.info.metadata["skipped"])


# --- exported functions that loop forever or declare huge tensors -------------------------------------


def _with_function(exported, tmp_path, body):
    """A copy of ``exported`` whose model.stablehlo is ``body(weights, images)``, model.json and SHA256SUMS updated."""
    from jax import export as jax_export

    from effnet_jax.serving import bundle

    folder = tmp_path / "hand_made"
    shutil.copytree(exported, folder)
    original = jax_export.deserialize(bytearray((folder / bundle.FUNCTION_FILE).read_bytes()))
    *weights, image = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in original.in_avals]
    blob = jax_export.export(jax.jit(body), platforms=["cpu"])(weights, image).serialize()
    (folder / bundle.FUNCTION_FILE).write_bytes(blob)
    meta = json.loads((folder / bundle.MODEL_JSON).read_text())
    meta["files"]["function"].update(bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    (folder / bundle.MODEL_JSON).write_text(json.dumps(meta))
    names = (bundle.MODEL_JSON, bundle.FUNCTION_FILE, bundle.WEIGHTS_FILE, bundle.GRADCAM_FILE)
    (folder / bundle.SUMS_FILE).write_text(bundle.sums_text({n: (folder / n).read_bytes() for n in names}))
    return folder


def _endless(weights, images):
    state = (jnp.int32(0), jnp.zeros(images.shape[0], jnp.float32))
    return jax.lax.while_loop(lambda s: s[0] < 1, lambda s: (s[0] * 0, s[1] + 1.0), state)[1]


def _huge(weights, images):
    planes = jnp.ones((images.shape[0], 1 << 16, 1 << 16), jnp.float32) * images.astype(jnp.float32).sum()
    return jnp.tanh(planes.sum(axis=(1, 2))) * 0 + 0.5


@pytest.mark.parametrize(
    "body, why",
    [
        (_endless, "holds a stablehlo.while op, which effnet-export never emits"),
        (_huge, r"largest tensor type tensor<\?x65536x65536xf32> .* would take 17,179,869,184 bytes"),
    ],
    ids=["endless-loop", "huge-tensor"],
)
def test_a_hand_made_function_that_loops_or_allocates_is_refused_at_load(exported, tmp_path, body, why):
    # Before: the endless loop loaded, and effnet-predict --exported never returned (10 CPU-minutes, killed).
    from effnet_jax import serving

    folder = _with_function(exported, tmp_path, body)
    with pytest.raises(serving.ExportedModelError, match=f"{folder}/model.stablehlo: .*{why}"):
        serving.load(str(folder))


def test_the_real_export_passes_the_module_checks(exported):
    from effnet_jax import serving

    model = serving.load(exported)
    assert model.run(np.zeros((2, model.image_size, model.image_size), np.uint8)).shape == (2,)


# --- batch sizes that pad every batch past the budget --------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from export_fixtures import make_workdir

    return make_workdir(tmp_path_factory.mktemp("run"))


def test_effnet_predict_with_a_petabyte_batch_is_one_line(workdir, tmp_path, capsys):
    # Before: numpy's _ArrayMemoryError traceback (10.9 PiB for --batch_size=10**12).
    from effnet_jax.inference.prediction import Predictor

    with pytest.raises(ValueError, match=r"batch_size=1000000000000: a batch of .* over the decoded-size budget"):
        Predictor(workdir, batch_size=10**12)
    with pytest.raises(ValueError, match=r"^batch_size=0: expected an integer >= 1$"):  # round 7: was taken as 1
        Predictor(workdir, batch_size=0)


def test_effnet_adapt_with_a_petabyte_batch_is_refused_before_reading_or_writing(workdir, tmp_path):
    from effnet_jax.inference.adaptation import AdaptError, adapt_run

    images = tmp_path / "site"
    images.mkdir()
    (images / "a.jpeg").write_bytes(fx.jpeg(1))
    with pytest.raises(AdaptError, match=r"^--batch_size=10000000000: a batch of"):
        adapt_run(workdir, str(images), str(tmp_path / "adapted"), batch_size=10**10)
    assert not (tmp_path / "adapted").exists()


# --- config keys that size processes, buffers and stored images -----------------------------------------


@pytest.mark.parametrize(
    "key, value, why",
    [
        ("data.num_workers", -1, "an integer from 0"),
        ("data.num_workers", 100_000, "an integer from 0 .* to 256"),
        ("data.prefetch_buffer", -1, "an integer from 1 to 256"),
        ("data.max_size", 0, "an integer from 8 to 16384"),
        ("data.center_crop", 0.0, r"a fraction in \(0, 1\]"),
        ("data.center_crop", float("nan"), r"a fraction in \(0, 1\]"),
        ("data.center_crop", 5.0, r"a fraction in \(0, 1\]"),
        ("data.synthetic_examples", 10**12, "an integer from 4 to 1,000,000"),
    ],
)
def test_data_keys_that_size_processes_or_memory_are_refused_naming_the_key(key, value, why):
    # Before: a dry run with data.synthetic_examples=10**12 was killed by the OOM killer (16 GB);
    # num_workers=100000 would fork that many grain workers; max_size=0 exported a model serving refuses.
    config = tiny_config(**{key: value})
    with pytest.raises(ValueError, match=re.escape(f"config.{key}={value!r}: expected ") + why):
        validate_config(config)


def test_the_shipped_data_values_pass():
    validate_config(tiny_config(**{"data.num_workers": 8, "data.center_crop": 0.9, "data.max_size": 36}))


def test_more_soup_seeds_than_a_run_may_hold_are_refused():
    from effnet_jax.train import soup

    config = tiny_config(soup_seeds=65)
    with pytest.raises(ValueError, match=r"config\.soup_seeds=65: expected an integer >= 1, at most 64"):
        soup.soup_seeds(config)
    assert soup.soup_seeds(tiny_config(soup_seeds=64)) == 64


# --- a sweep grid sized before it is built ---------------------------------------------------------------


def test_a_sweep_grid_of_millions_of_points_is_refused_before_it_is_built(tmp_path):
    # Before: 2000 x 2000 values built 4,000,000 deep copies of the config (GBs, an hour) before training.
    from effnet_jax import sweep

    axes = [sweep.Axis("seed", tuple(range(2000))), sweep.Axis("optimizer.learning_rate", tuple(range(1, 2001)))]
    with pytest.raises(sweep.SweepError, match=r"2000 \(seed\) x 2000 \(optimizer.learning_rate\) = 4,000,000 points"):
        sweep.plan(tiny_config(), str(tmp_path / "sweep"), axes)
    assert len(sweep.plan(tiny_config(), str(tmp_path / "sweep"), [sweep.Axis("seed", (0, 1))])) == 2
