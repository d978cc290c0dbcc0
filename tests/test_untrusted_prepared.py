"""Prepared TFDS data sets (data.data_dir): what effnet-data prepare reuses, and what training and evaluation read.

A prepared set may be shared, downloaded or left half-done: a version folder no preparation wrote,
a link, a dataset_info.json naming files or counts of its own choosing, JSON and label files of any
size, damaged shards and records. Each is refused in one line naming the file (or the record) before
TFDS reads it, a record's image gets the checks a raw file gets, and data prepared from other files
is refused rather than reused (docs/untrusted-inputs.md).
"""

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import crafted_fixtures as crafted
import data_fixtures as fx
import pytest
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from data_fixtures import GOOD_TREE, write_mnist_npz, write_tree
from helpers import eval_pass
from tensorflow_datasets.core import decode
from tensorflow_datasets.proto import tf_example_pb2

from effnet_jax.cli import data as data_cli
from effnet_jax.cli.errors import one_line
from effnet_jax.data import imaging, prepare
from effnet_jax.data.eda import scan
from effnet_jax.data.prepared_files import PreparedDataError
from effnet_jax.train import config as config_lib

# --- version folders no preparation wrote ---------------------------------------------------------


def _prepare(root, data_dir):
    return data_cli.main(
        ["prepare", "--name=chest_xray", f"--manual_dir={root}", f"--data_dir={data_dir}", "--max_size=32"]
    )


def test_an_empty_version_folder_is_refused_not_reused_as_a_prepared_set(tmp_path, capsys):
    # Before: TFDS "reused" it: effnet-data prepare printed the split counts and the trainer
    # then had no files to read.
    root = write_tree(tmp_path / "raw", GOOD_TREE)
    version = tmp_path / "tfds" / "chest_xray" / "max32" / "1.0.0"
    version.mkdir(parents=True)
    assert _prepare(root, tmp_path / "tfds") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"effnet-data: {version}: a prepared data set's folder without its dataset_info.json, not written by a "
        "preparation; remove it to prepare the data set again, or set data.data_dir to another folder"
    )
    assert not list(version.iterdir())


@pytest.mark.parametrize("prepared", [False, True])
def test_a_version_folder_linked_elsewhere_is_refused(tmp_path, capsys, prepared):
    # Before: a link to an empty folder was "reused" as above; one to a set prepared elsewhere was read there.
    root = write_tree(tmp_path / "raw", GOOD_TREE)
    target = tmp_path / "elsewhere" / "chest_xray" / "max32" / "1.0.0"
    if prepared:
        assert _prepare(root, tmp_path / "elsewhere") == 0
    else:
        target.mkdir(parents=True)
    capsys.readouterr()
    version = tmp_path / "tfds" / "chest_xray" / "max32" / "1.0.0"
    version.parent.mkdir(parents=True)
    version.symlink_to(target)
    assert _prepare(root, tmp_path / "tfds") == 4
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"effnet-data prepare: {version}: is a symbolic link to {target}; refusing to read the data set through it "
        "(remove the link, or set data.data_dir to another folder)"
    )
    assert prepared or not list(target.iterdir())


def test_a_link_among_a_prepared_sets_files_is_refused_and_the_set_itself_reads(tmp_path, capsys):
    root = write_tree(tmp_path / "raw", GOOD_TREE)
    data_dir = tmp_path / "tfds"
    assert _prepare(root, data_dir) == 0
    assert _prepare(root, data_dir) == 0  # prepared: read back, not prepared again
    capsys.readouterr()
    version = data_dir / "chest_xray" / "max32" / "1.0.0"
    shard = next(p for p in version.iterdir() if "train.array_record" in p.name)
    moved = tmp_path / "moved"
    shard.rename(moved)
    shard.symlink_to(moved)
    assert _prepare(root, data_dir) == 4
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"effnet-data prepare: {shard}: is a symbolic link to {moved}; a prepared data set holds its own files: "
        "refusing to read through it (prepare the set again)"
    )


@pytest.mark.parametrize("planted", ["chest_xray", "chest_xray/max32", "chest_xray/.config"])
def test_effnet_data_prepare_never_writes_the_prepared_set_through_a_planted_folder_link(tmp_path, capsys, planted):
    # Before: a chest_xray/ link in --data_dir got the whole prepared set written where it led.
    root = write_tree(tmp_path / "data", GOOD_TREE)
    outside = tmp_path / "outside"
    outside.mkdir()
    data_dir = tmp_path / "tfds"
    (data_dir / planted).parent.mkdir(parents=True, exist_ok=True)
    (data_dir / planted).symlink_to(outside)
    status = data_cli.main(
        ["prepare", "--name=chest_xray", f"--manual_dir={root}", f"--data_dir={data_dir}", "--max_size=32"]
    )
    assert status == 4
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"effnet-data prepare: {data_dir / planted}: is a symbolic link to {outside}; refusing to prepare the data set "
        "through it (remove the link, or set data.data_dir to another folder)"
    )
    assert not list(outside.iterdir())


def _tree(root):
    return write_tree(root, GOOD_TREE)


def test_preparing_into_a_data_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    # os.makedirs of the preparation lock raised FileExistsError: a traceback.
    target = tmp_path / "tfds"
    target.write_text("a file")
    status = data_cli.main(
        ["prepare", "--name=chest_xray", f"--manual_dir={_tree(tmp_path / 'data')}", f"--data_dir={target}"]
    )
    assert status == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(f"data.data_dir='{target}': not a folder; expected the folder to prepare the data set into")
    )


# --- dataset_info.json and the other JSON files ---------------------------------------------------


def test_a_prepared_sets_dataset_info_linked_out_of_the_data_dir_is_refused_unless_follow_links(tmp_path, capsys):
    # Before: read through the link, whole and unbounded (a link to /dev/zero never returned).
    outside = tmp_path / "elsewhere" / "dataset_info.json"
    outside.parent.mkdir()
    outside.write_text(json.dumps({"name": "chest_xray"}))
    data_dir = tmp_path / "data"
    (data_dir / "chest_xray").mkdir(parents=True)
    (data_dir / "chest_xray" / "dataset_info.json").symlink_to(outside)
    found = data_dir / "chest_xray" / "dataset_info.json"
    with pytest.raises(
        ValueError, match=f"^{found}: a link to {outside}, outside the folder {data_dir} it was found in"
    ):
        scan.find_prepared(data_dir)
    assert scan.find_prepared(data_dir, follow_links=True) == data_dir / "chest_xray"
    status = data_cli.main(["report", f"--data_dir={data_dir}", f"--out={tmp_path / 'out'}", "--no_progress"])
    assert status == 2
    assert capsys.readouterr().err.strip().startswith(f"effnet-data: {found}: a link to {outside}")


def test_a_dataset_info_that_is_not_json_is_named(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "dataset_info.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"v/dataset_info\.json: not valid JSON"):
        scan.find_prepared(tmp_path)


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


# --- shards and records ---------------------------------------------------------------------------


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


def _one_line_starting(error: BaseException, start: str) -> None:
    assert str(error).startswith(start) and "\n" not in str(error), str(error)


def _prepared_mnist(tmp_path):
    write_mnist_npz(tmp_path / "raw" / "pneumoniamnist.npz", size=28)
    c = config_lib.default_data_config()
    c.name, c.mnist_size, c.manual_dir, c.data_dir = (
        "pneumonia_mnist",
        28,
        str(tmp_path / "raw"),
        str(tmp_path / "tfds"),
    )
    factory = prepare.BuilderFactory(name=c.name, manual_dir=c.manual_dir, data_dir=c.data_dir, mnist_size=28)
    return c, Path(prepare.ensure_prepared(factory).data_dir)


def _plant(version_dir: Path, split: str, index: int, make) -> None:
    """Replace the image bytes of record ``index`` of ``split`` by ``make(old bytes)``, of the same length.

    The serialized example holds the PNG bytes as they are, so a same-length replacement keeps it valid.
    """
    builder = tfds.builder_from_directory(str(version_dir))
    old = builder.as_data_source(split, decoders={"image": decode.SkipDecoding()})[index]["image"]
    new = make(old)
    assert len(new) == len(old)
    (path,) = version_dir.glob(f"*-{split}.array_record-*")
    reader = ArrayRecordReader(str(path))
    options, records = reader.writer_options_string(), reader.read_all()
    reader.close()
    records[index] = records[index].replace(old, new)
    writer = ArrayRecordWriter(str(path), options)
    for record in records:
        writer.write(record)
    writer.close()


def _huge_png(side: int, colour: int):
    """A PNG of ``side`` x ``side`` pixels of PNG colour type ``colour`` and no pixel data, as long as the bytes it replaces."""

    def make(old: bytes) -> bytes:
        ihdr = crafted.png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, colour, 0, 0, 0))
        head = b"\x89PNG\r\n\x1a\n" + ihdr + crafted.png_chunk(b"IDAT", zlib.compress(b""))
        return head + crafted.png_chunk(b"prVt", b"\0" * (len(old) - len(head) - 24)) + crafted.png_chunk(b"IEND", b"")

    return make


@pytest.mark.parametrize(
    "side, colour, match",
    [
        (30000, 0, "refused as a decompression bomb"),  # over Pillow's own limit
        (9000, 2, r"a PNG image of 9000x9000 pixels in mode RGB would take [\d,]+ bytes to decode, over"),
    ],
    ids=["grey-30000", "rgb-9000"],
)
def test_a_planted_oversized_record_of_a_prepared_data_set_is_refused_before_decoding(tmp_path, side, colour, match):
    # Before: the TFDS reader handed the record's bytes straight to Pillow, unchecked: a 30000 x 30000
    # header was a DecompressionBombError traceback, a 9000 x 9000 RGB one (under Pillow's limits)
    # allocated 324 MB before failing as truncated; neither named the data set or the record.
    c, version_dir = _prepared_mnist(tmp_path)
    _plant(version_dir, "val", 2, _huge_png(side, colour))
    with pytest.raises(imaging.ImageBudgetError, match=match) as refusal:
        eval_pass(c, "validation", 28)
    _one_line_starting(refusal.value, f"{version_dir} val record 2 ('val_00002'): ")


def test_a_corrupt_record_of_a_prepared_data_set_is_a_bad_image_naming_it(tmp_path):
    # Before: an OSError traceback from the pipeline's decode, naming neither data set nor record.
    c, version_dir = _prepared_mnist(tmp_path)

    def corrupt(png: bytes) -> bytes:
        flipped = bytearray(png)
        flipped[png.index(b"IDAT") + 10] ^= 0xFF
        return bytes(flipped)

    _plant(version_dir, "val", 1, corrupt)
    with pytest.raises(imaging.BadImageError, match="corrupt or truncated image") as refusal:
        eval_pass(c, "validation", 28)
    _one_line_starting(refusal.value, f"{version_dir} val record 1 ('val_00001'): corrupt or truncated image (")


# --- data prepared from other files ---------------------------------------------------------------


def test_prepared_data_is_refused_when_a_file_changed_but_kept_its_name_and_size(tmp_path):
    raw = fx.write_tree(tmp_path / "chest_xray", fx.GOOD_TREE)
    factory = prepare.BuilderFactory(
        name="chest_xray", manual_dir=str(raw), data_dir=str(tmp_path / "tfds"), max_size=36
    )
    builder = prepare.ensure_prepared(factory)
    assert builder.info.metadata["source_fingerprint"].startswith("crc2:")
    victim = next(p for p in sorted(raw.rglob("*.jpeg")) if "train/NORMAL" in str(p))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same name, same size, other bytes
    victim.write_bytes(bytes(data))
    with pytest.raises(prepare.StalePreparedDataError, match=r"\(files added, removed or changed\): delete"):
        prepare.ensure_prepared(factory)
    # Another folder with the same names and sizes but other content is another source.
    other = fx.write_tree(tmp_path / "other", fx.GOOD_TREE)
    first = next(p for p in sorted(other.rglob("*.jpeg")) if "test/PNEUMONIA" in str(p))
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0x01
    first.write_bytes(bytes(data))
    moved = prepare.BuilderFactory(
        name="chest_xray", manual_dir=str(other), data_dir=str(tmp_path / "tfds"), max_size=36
    )
    with pytest.raises(prepare.StalePreparedDataError):
        prepare.ensure_prepared(moved)


def test_data_prepared_with_the_old_names_and_sizes_fingerprint_is_refused(tmp_path, monkeypatch):
    raw = fx.write_tree(tmp_path / "chest_xray", fx.GOOD_TREE)
    factory = prepare.BuilderFactory(
        name="chest_xray", manual_dir=str(raw), data_dir=str(tmp_path / "tfds"), max_size=36
    )
    builder = prepare.ensure_prepared(factory)
    builder.info.metadata["source_fingerprint"] = "0123456789abcdef"  # as recorded before content hashes
    monkeypatch.setattr(prepare.BuilderFactory, "__call__", lambda self: builder)
    with pytest.raises(prepare.StalePreparedDataError, match="prepared before file contents were fingerprinted"):
        prepare.ensure_prepared(factory)


def test_prepared_data_from_other_files_is_refused_not_reused(tmp_path):
    raw = fx.write_tree(tmp_path / "chest_xray", fx.GOOD_TREE)
    factory = prepare.BuilderFactory(
        name="chest_xray", manual_dir=str(raw), data_dir=str(tmp_path / "tfds"), max_size=36
    )
    prepare.ensure_prepared(factory)
    assert prepare.ensure_prepared(factory).is_prepared()  # the same files: reused
    # The same files reached through their parent folder are the same data.
    prepare.ensure_prepared(
        prepare.BuilderFactory(
            name="chest_xray", manual_dir=str(tmp_path), data_dir=str(tmp_path / "tfds"), max_size=36
        )
    )
    other = fx.write_tree(tmp_path / "cleaned", {k: v for k, v in fx.GOOD_TREE.items() if "IM-0001-0002" not in k})
    stale = prepare.BuilderFactory(
        name="chest_xray", manual_dir=str(other), data_dir=str(tmp_path / "tfds"), max_size=36
    )
    with pytest.raises(
        prepare.StalePreparedDataError,
        match=rf"was prepared from {raw} \(16 files.*manual_dir='{other}' now lists 15 files.*delete",
    ):
        prepare.ensure_prepared(stale)


def test_an_old_run_whose_raw_folder_is_gone_still_reads_its_prepared_copy(tmp_path):
    import shutil

    raw = fx.write_tree(tmp_path / "chest_xray", fx.GOOD_TREE)
    factory = prepare.BuilderFactory(
        name="chest_xray", manual_dir=str(raw), data_dir=str(tmp_path / "tfds"), max_size=36
    )
    prepare.ensure_prepared(factory)
    shutil.rmtree(raw)
    assert prepare.ensure_prepared(factory).is_prepared()
