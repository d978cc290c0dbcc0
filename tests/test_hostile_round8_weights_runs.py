"""Hostile inputs, round 8: weight files, downloaded run directories and exported functions.

Each case failed before the fix it names (a wrong tensor read silently, a reader's own function
changed by a file, a traceback or a GB read from a damaged folder, a resumed run blocked forever
on a FIFO, a checkpoint config taken at its word, a complex tensor past the budget) and is
asserted here as the documented behaviour (docs/untrusted-inputs.md). No model is trained.
"""

import collections
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile

import h5py
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO, edit_json, machinery_config
from test_hostile_inputs import _StorageRef, _Tensor, _write_pth

from effnet_jax import runs
from effnet_jax.runs import checkpoints as checkpoint_lib
from effnet_jax.weights import WeightFileError, read_weights, readers

# --- weight files ----------------------------------------------------------------------------------


def test_a_torch_zip_saved_big_endian_reads_its_values_as_torch_does(tmp_path):
    # Before: the byteorder record was ignored and [1, 2, 3, 4] read as [4.6e-41, 9e-44, ...].
    state = collections.OrderedDict({"w": _Tensor(_StorageRef("0", 4), 0, (4,), (1,))})
    path = _write_pth(tmp_path / "be.pth", state, {"0": np.array([1, 2, 3, 4], ">f4").tobytes()}, legacy=False)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("archive/byteorder", "big")
    tensors, _ = read_weights(path)
    np.testing.assert_array_equal(tensors["w"], [1, 2, 3, 4])
    assert tensors["w"].dtype == np.float32 and tensors["w"].dtype.isnative


def test_a_byteorder_record_naming_neither_order_is_refused(tmp_path):
    state = collections.OrderedDict({"w": _Tensor(_StorageRef("0", 4), 0, (4,), (1,))})
    path = _write_pth(tmp_path / "odd.pth", state, {"0": np.ones(4, np.float32).tobytes()}, legacy=False)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("archive/byteorder", "middle")
    with pytest.raises(WeightFileError, match=f"{path}: archive/byteorder says b'middle'"):
        read_weights(path)


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


def test_a_safetensors_header_naming_a_tensor_twice_is_refused(tmp_path):
    # Before: json and the safetensors library each kept the last entry, silently.
    header = (
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    )
    path = tmp_path / "twice.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(WeightFileError, match=f"{path}: its header names 'a' twice"):
        read_weights(path)


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


# --- converted folders ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from export_fixtures import converted_test_weights

    return converted_test_weights(tmp_path_factory.mktemp("converted") / "base")


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


# --- downloaded runs --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """``run/`` (random Lite0 weights at 32 px, a jax train state) and ``exported/`` (its CPU export)."""
    from export_fixtures import export_tiny

    root = tmp_path_factory.mktemp("export")
    export_tiny(root)
    return root


@pytest.fixture(scope="module")
def exported(tiny_root):
    return str(tiny_root / "exported")


def _step(workdir, *parts):
    return os.path.join(workdir, "checkpoints", "3", *parts)


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda p: os.truncate(p, 64 << 20), "67,108,864 bytes, over the"),
        (lambda p: open(p, "w").write("[" * 100_000 + "]" * 100_000), "JSON nested deeper than 32"),
    ],
    ids=["sparse", "deep"],
)
def test_a_checkpoints_array_metadatas_are_read_bounded_before_orbax(tiny_root, tmp_path, make, why):
    # Before: orbax read a sparse array_metadatas/process_0 whole (4 GB: a MemoryError after 15 s).
    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_root / "run", workdir)
    path = _step(workdir, "state", "array_metadatas", "process_0")
    assert os.path.isfile(path)  # written for jax arrays (a trained state), not for a stand-in's numpy ones
    make(path)
    with pytest.raises(ValueError, match=f"{path}: {why}"):
        runs.open(workdir).variables()


def _write_list(path):
    with open(path, "w") as f:
        f.write("[]")


@pytest.mark.parametrize(
    "tamper, why",
    [
        (_write_list, "a list, expected a JSON object"),
        (lambda p: edit_json(p, lambda v: v.update(commit_timestamp_nsecs=1.5)), "not a checkpoint's metadata"),
        (lambda p: edit_json(p, lambda v: v.update(metrics={"auc": "high"})), "metrics.auc='high': expected a number"),
    ],
    ids=["list", "float-timestamp", "metric-text"],
)
def test_a_steps_checkpoint_metadata_of_another_shape_is_one_line_naming_it(run_copy, tamper, why):
    # Before: orbax parsed it as the manager opened: "Metadata dict must be a dictionary", naming no file.
    path = _step(run_copy, "_CHECKPOINT_METADATA")
    tamper(path)
    with pytest.raises(ValueError, match=f"{path}: {why}"):
        runs.open(run_copy)


@pytest.mark.parametrize(
    "edit, why",
    [
        (lambda c: c.update(image_size=100_000), "image_size=100000: expected an integer from 16 to 2048"),
        (lambda c: c.update(model_mean=[float("nan")] * 3), r"mean=\[nan, nan, nan\]: expected a list of finite"),
        (lambda c: c.update(model_std=[0, 0, 0]), r"std=\[0, 0, 0\]: expected a list of positive"),
        (lambda c: c.update(train_class_counts=["a", "b"]), r"train_class_counts=\['a', 'b'\]: expected"),
    ],
    ids=["image-size", "nan-mean", "zero-std", "text-counts"],
)
def test_a_checkpoint_without_its_run_record_has_its_config_values_checked(run_copy, edit, why):
    # Before: a checkpoint without run/ took image size and normalisation from its config unchecked
    # (an image size of 100000, a NaN mean that blanks every image, an int() traceback naming nothing).
    shutil.rmtree(_step(run_copy, "run"))
    edit_json(_step(run_copy, "config", "metadata"), edit)
    with pytest.raises(ValueError, match=f"{_step(run_copy, 'config')}: {why}"):
        runs.open(run_copy)


def test_a_checkpoint_without_its_run_record_still_opens(run_copy):
    shutil.rmtree(_step(run_copy, "run"))
    run = runs.open(run_copy)
    assert run.record.image_size == machinery_config().image_size


_CALIBRATION = {"temperature": 2.0, "fitted_on": "validation", "step": 3, "ece_before": 0.1, "ece_after": 0.05, "n": 9}


@pytest.mark.parametrize(
    "change, why",
    [
        ({"step": 3.7}, "step=3.7: expected an integer >= 0"),
        ({"step": "3"}, "step='3': expected an integer >= 0"),
        ({"temperature": "2.0"}, "temperature='2.0': expected a finite number"),
        ({"fitted_on": ["x"]}, r"fitted_on=\['x'\]: expected a string"),
        ({"n": True}, "n=True: expected an integer >= 0"),
        ({"n": -5}, "n=-5: expected an integer >= 0"),
        ({"ece_before": float("nan")}, "ece_before=nan: expected a finite number"),
        ({"tta": 5}, "tta=5: expected a string"),
    ],
    ids=["float-step", "text-step", "text-temperature", "list-fitted-on", "bool-n", "negative-n", "nan-ece", "int-tta"],
)
def test_calibration_values_of_another_type_are_refused_naming_the_key(run_copy, change, why):
    # Before: int(3.7) applied the temperature at step 3; str(), float() and bool counts took anything.
    path = os.path.join(run_copy, "calibration.json")
    with open(path, "w") as f:
        f.write(json.dumps({**_CALIBRATION, **change}))
    with pytest.raises(ValueError, match=f"{path}: not a valid calibration file \\(ValueError: {why}"):
        runs.open(run_copy)


def test_resuming_a_run_whose_checkpoint_holds_a_fifo_is_refused_without_blocking(run_copy):
    # Before: effnet-train's resume opened checkpoints/3/state/_METADATA, a FIFO, and waited forever.
    path = _step(run_copy, "state", "_METADATA")
    os.remove(path)
    os.mkfifo(path)
    with pytest.raises(checkpoint_lib.CheckpointMismatchError, match=f"{path}: not a regular file"):
        checkpoint_lib.check_workdir_resumable(run_copy, machinery_config())


# --- exported functions ---------------------------------------------------------------------------


def _complex_planes(weights, images):
    planes = jnp.ones((images.shape[0], 1 << 15, 1 << 15), jnp.complex64) * images.astype(jnp.float32).sum()
    return jnp.real(planes.sum(axis=(1, 2))) * 0 + 0.5


@pytest.mark.parametrize(
    "body, why",
    [(_complex_planes, r"tensor<\?x32768x32768xcomplex<f32>> \(for one image\) would take 8,589,934,592")],
    ids=["complex"],
)
def test_tensors_the_budget_check_missed_are_refused_at_load(exported, tmp_path, body, why):
    # Before: the pattern read no complex type, and an 8 GiB tensor per image loaded.
    from test_hostile_round4 import _with_function

    from effnet_jax import serving

    folder = _with_function(exported, tmp_path, body)
    with pytest.raises(serving.ExportedModelError, match=f"{folder}/model.stablehlo: its largest tensor type {why}"):
        serving.load(str(folder))
