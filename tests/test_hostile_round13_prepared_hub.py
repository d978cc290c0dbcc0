"""Hostile inputs, round 13: a prepared TFDS data set someone shares, and a planted Hugging Face cache.

Each case failed before the fix it names. A prepared set's ``dataset_info.json`` named shard files
anywhere (``/etc/passwd`` was opened), declared 10^11 records (a MemoryError traceback) or a negative
count; its JSON and label files were read whole by TFDS (a sparse 10 GB one took 20 GB); a truncated,
damaged or missing shard, an unparseable record, a label of 2,000,000,000 (GBs to count, then killed) or
a missing label was a traceback or silently read; ``effnet-data report`` imported any module
``features.json`` named. A hub cache's weight file linked out of the cache was read where it led, and a
sparse ``refs/main`` of 10 GB was read whole by huggingface_hub (killed at 23 GB).
"""

import json
import os
import shutil
import sys

import pytest
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from data_fixtures import GOOD_TREE, write_tree
from tensorflow_datasets.proto import tf_example_pb2

from effnet_jax.cli.errors import one_line
from effnet_jax.data import prepare
from effnet_jax.data.eda import scan
from effnet_jax.data.prepared_files import PreparedDataError
from effnet_jax.weights import hub, pypi
from effnet_jax.weights.readers import WeightFileError

# --- 1. a prepared data set's files, checked before TFDS reads them --------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A chest_xray set prepared once (max_size 32): the TFDS data dir."""
    base = tmp_path_factory.mktemp("prepared")
    root = write_tree(base / "raw", GOOD_TREE)
    factory = prepare.BuilderFactory(name="chest_xray", manual_dir=str(root), data_dir=str(base / "tfds"), max_size=32)
    prepare.ensure_prepared(factory)
    return base / "tfds"


def _copy(prepared, tmp_path):
    """A copy of the prepared data dir, and its version folder."""
    data_dir = tmp_path / "tfds"
    shutil.copytree(prepared, data_dir)
    return data_dir, data_dir / "chest_xray" / "max32" / "1.0.0"


def _read(data_dir):
    """What effnet-train and effnet-eval do with a downloaded prepared set: open it, list every split's records."""
    factory = prepare.BuilderFactory(name="chest_xray", data_dir=str(data_dir), max_size=32)
    return prepare.read_part_metadata(prepare.ensure_prepared(factory, allow_prepare=False))


def _one_line(error, starts: str) -> None:
    assert one_line(error) is not None, error  # a CLI reports it in one line, no traceback
    assert str(error).startswith(starts) and "\n" not in str(error), str(error)


def _edit_info(version, edit) -> None:
    path = version / "dataset_info.json"
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info))


def _split(info, name):
    return next(s for s in info["splits"] if s["name"] == name)


def _many_splits(info):
    info["splits"] += [{"name": f"s{i}", "shardLengths": ["0"]} for i in range(100)]


@pytest.mark.parametrize(
    "edit, why",
    [
        (lambda i: _split(i, "val").update(shardLengths=["100000000000"]), "listing the 100,000,000,014 records"),
        (lambda i: _split(i, "val").update(shardLengths=["-5"]), "split val declares a shard of -5 records"),
        (lambda i: _split(i, "val").update(shardLengths=["0"] * 5000), "5,000 shards, more than the 4096 accepted"),
        (lambda i: _split(i, "val").update(filepathTemplate="/etc/passwd"), "split val names its files '/etc/passwd'"),
        (lambda i: _split(i, "val").update(filepathTemplate="../../../x/{SHARD_X_OF_Y}"), "split val names its files"),
        (lambda i: _split(i, "val").update(name="../../x"), "split name '../../x'"),
        (_many_splits, "103 splits, more than the 64 accepted"),
        (lambda i: i.update(fileFormat="tfrecord"), "fileFormat 'tfrecord'"),
        (lambda i: i.update(name="mnist"), "describes data set 'mnist', not 'chest_xray'"),
        (lambda i: _split(i, "val").update(numBytes="many"), "not a TFDS dataset info"),
    ],
    ids=[
        "huge-count",
        "negative",
        "shards",
        "abs-path",
        "dotdot",
        "split-name",
        "splits",
        "tfrecord",
        "other-set",
        "bad-type",
    ],
)
def test_a_dataset_info_declaring_other_files_or_counts_is_refused_naming_it(prepared, tmp_path, edit, why):
    # Before: /etc/passwd was opened as a shard, 10^11 records a MemoryError traceback, the others tracebacks.
    data_dir, version = _copy(prepared, tmp_path)
    _edit_info(version, edit)
    with pytest.raises(PreparedDataError, match=why) as refusal:
        _read(data_dir)
    _one_line(refusal.value, f"{version}/dataset_info.json: ")


@pytest.mark.parametrize("name", ["dataset_info.json", "label.labels.txt", "metadata.json", "features.json"])
@pytest.mark.parametrize("kind", ["sparse", "fifo"])
def test_a_prepared_sets_json_or_label_file_is_read_only_when_small_and_regular(
    prepared, tmp_path, monkeypatch, name, kind
):
    # Before: TFDS read each whole (a sparse 10 GB one took 20 GB) or, a FIFO, blocked or failed in a traceback.
    monkeypatch.setenv("EFFNET_JAX_DECODE_BUDGET", "1M")  # files of at most 32 KiB
    data_dir, version = _copy(prepared, tmp_path)
    path = version / name
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        with open(path, "wb") as f:
            f.truncate((1 << 20) // 32 + 1)
    why = "not a regular file" if kind == "fifo" else "32,769 bytes, over the 32,768"
    with pytest.raises(PreparedDataError, match=why) as refusal:
        _read(data_dir)
    _one_line(refusal.value, f"{path}: ")


@pytest.mark.parametrize("text", ["[1, 2]", "{not json"])
def test_a_metadata_json_that_is_no_object_is_one_line_naming_it(prepared, tmp_path, text):
    # Before: a TypeError or JSONDecodeError from TFDS, in a traceback or naming no file.
    data_dir, version = _copy(prepared, tmp_path)
    (version / "metadata.json").write_text(text)
    with pytest.raises(PreparedDataError, match="not a JSON object|not valid JSON") as refusal:
        factory = prepare.BuilderFactory(name="chest_xray", data_dir=str(data_dir), max_size=32)
        prepare.ensure_prepared(factory, allow_prepare=False).info.metadata.get("source")
    _one_line(refusal.value, f"{version}/metadata.json: ")


def _shard(version, split="val"):
    return next(version.glob(f"*-{split}.array_record-*"))


def _rewrite(path, edit) -> None:
    reader = ArrayRecordReader(str(path))
    options, records = reader.writer_options_string(), reader.read_all()
    reader.close()
    writer = ArrayRecordWriter(str(path), options)
    for record in edit(records):
        writer.write(record)
    writer.close()


def _truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


def _fifo(path):
    path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize(
    "damage, why",
    [
        (_truncate, "a damaged or truncated array_record shard"),
        (lambda p: p.write_bytes(b"x" * 100), r"a damaged or truncated array_record shard \(ArrayRecord file should"),
        (lambda p: p.unlink(), "a shard dataset_info.json declares, missing"),
        (_fifo, "not a regular file"),
        (lambda p: _rewrite(p, lambda r: r + r), "holds 4 records, but dataset_info.json declares 2"),
    ],
    ids=["truncated", "garbage", "missing", "fifo", "more-records"],
)
def test_a_damaged_shard_is_one_line_naming_it(prepared, tmp_path, damage, why):
    # Before: a RuntimeError or TypeError traceback from TFDS or array_record, a FIFO blocking the read.
    data_dir, version = _copy(prepared, tmp_path)
    shard = _shard(version)
    damage(shard)
    with pytest.raises(PreparedDataError, match=why) as refusal:
        _read(data_dir)
    _one_line(refusal.value, f"{shard}: ")


def _set(key, kind, values):
    def edit(records):
        example = tf_example_pb2.Example.FromString(records[1])
        feature = example.features.feature[key]
        feature.Clear()
        getattr(feature, kind).value.extend(values)
        records[1] = example.SerializeToString()
        return records

    return edit


def _drop(key):
    def edit(records):
        example = tf_example_pb2.Example.FromString(records[1])
        del example.features.feature[key]
        records[1] = example.SerializeToString()
        return records

    return edit


def _replace(data):
    def edit(records):
        records[1] = data
        return records

    return edit


@pytest.mark.parametrize(
    "edit, why",
    [
        (_set("label", "int64_list", [2_000_000_000]), "label 2000000000 is not a class of this data set"),
        (_set("label", "int64_list", [-1]), "label -1 is not a class"),
        (_drop("label"), "label None is not a class"),
        (_replace(b"\x0a\x80\x80\x80\x80\x08" + b"\0" * 20), "cannot be read .*Wire format was corrupt"),
        (_replace(b""), "label None is not a class"),
        (_set("image", "int64_list", [1]), "holds no image bytes"),
        (_set("file_name", "bytes_list", [b"\xff\xfe"]), "its file_name is not UTF-8 text"),
        (_set("patient_id", "bytes_list", [b"A" * 20_000]), "its patient_id is not text of at most 16,384 bytes"),
    ],
    ids=["label-2e9", "label-negative", "no-label", "huge-length", "empty", "image-int", "name-not-utf8", "long-id"],
)
def test_a_record_out_of_range_or_unreadable_is_refused_naming_it(prepared, tmp_path, edit, why):
    # Before: a label of 2e9 took GBs (bincount) until killed, -1 was read as PNEUMONIA, the others tracebacks.
    data_dir, version = _copy(prepared, tmp_path)
    _rewrite(_shard(version), edit)
    with pytest.raises(PreparedDataError, match=why) as refusal:
        _read(data_dir)
    _one_line(refusal.value, f"{version} val record 1: ")


def test_the_prepared_set_itself_reads(prepared, tmp_path):
    data_dir, _ = _copy(prepared, tmp_path)
    assert {split: len(meta.labels) for split, meta in _read(data_dir).items()} == {"train": 11, "val": 2, "test": 3}


def test_the_data_report_never_imports_a_module_features_json_names(prepared, tmp_path, monkeypatch):
    # Before: TFDS imported the module of any class features.json named (`this.X` printed the Zen of Python).
    planted = tmp_path / "planted_features_module.py"
    planted.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data_dir, version = _copy(prepared, tmp_path)
    features = json.loads((version / "features.json").read_text())
    features["featuresDict"]["features"]["label"]["pythonClassName"] = "planted_features_module.ClassLabel"
    (version / "features.json").write_text(json.dumps(features))
    with pytest.raises(PreparedDataError, match="not the features of a prepared chest_xray set") as refusal:
        scan.scan_prepared(version, progress=False)
    _one_line(refusal.value, f"{version}/features.json: ")
    assert not (tmp_path / "ran").exists()


# --- 2. a planted Hugging Face cache -----------------------------------------------------------------

REPO = "timm/efficientnet_b0.ra_in1k"
COMMIT = "a" * 40


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline, empty hub cache holding REPO's refs/main and snapshot folder: the snapshot folder."""
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "cache" / "models--timm--efficientnet_b0.ra_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    return repo / "snapshots" / COMMIT


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
            get(REPO)


def test_a_hub_cache_ref_that_is_no_commit_hash_is_refused_before_it_is_read(hub_cache):
    # Before: huggingface_hub read refs/main whole: a sparse one of 10 GB took 23 GB, then the OOM killer.
    ref = hub_cache.parent.parent / "refs" / "main"
    with open(ref, "wb") as f:
        f.truncate(10 << 30)
    for get in (hub.download, hub.cached_file):
        with pytest.raises(WeightFileError, match=r"refs/main: 10,737,418,240 bytes, not the commit hash"):
            get(REPO)


def test_a_hub_weight_file_inside_the_cache_is_found(hub_cache):
    blob = hub_cache.parent.parent / "blobs" / "0123"
    blob.parent.mkdir()
    blob.write_bytes(b"weights")
    (hub_cache / "model.safetensors").symlink_to(os.path.relpath(blob, hub_cache))  # as huggingface_hub links them
    assert hub.download(REPO) == hub.cached_file(REPO) == str(hub_cache / "model.safetensors")


# --- 3. an installed PyPI weights package whose .pth was replaced ------------------------------------


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
    entry = ("efficientnet-lite9-pytorch-model==0.1.0", "planted_weights_package", "ModelFile", "tf_efficientnet_lite0")
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
