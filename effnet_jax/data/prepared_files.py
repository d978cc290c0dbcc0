"""A prepared TFDS data set's files, checked before TFDS reads them: data.data_dir may be a downloaded copy.

TFDS reads a version folder's ``dataset_info.json``, ``features.json``, ``metadata.json`` and
``*.labels.txt`` whole (a sparse file of 10 GB took 20 GB), opens the shard files each split's
``filepathTemplate`` names (any path: ``/etc/passwd``, ``../../x``), trusts the record counts the
splits declare (a count of 10^11 became a list of as many indices) and reports a damaged shard or
record as a traceback. So, before a builder reads the folder (``check_folder``): no file in it is a
link, those files are regular files of at most the budget / 32 bytes, ``dataset_info.json`` parses
as TFDS parses it and declares array_record shards under TFDS's own names, at most ``MAX_SPLITS``
splits of at most ``MAX_SHARDS`` shards, and each shard is a regular file holding exactly the records
declared, all of them held to the budget. Then every record is checked as it is listed
(``read_split``): it parses, its labels are in range, its image is bytes and its names are UTF-8 text.
"""

from __future__ import annotations

import os
import re
import stat

import numpy as np

from effnet_jax import limits
from effnet_jax.output_files import UnsafeOutputError
from effnet_jax.weights.readers import read_json_file

# Our builders write train, val and test, in one shard each up to a few GB.
MAX_SPLITS = 64
MAX_SHARDS = 4096
TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"  # TFDS's default, what our builders write
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
# What listing one record costs besides its image bytes (a dict, numpy scalars, names): a shard of
# millions of empty records compresses to a few kB.
RECORD_BYTES = 1024
# A stored name is a path relative to its folder, under 4,096 bytes, escaped at most 4 characters a byte.
MAX_NAME = 16384


class PreparedDataError(ValueError):
    """A prepared data set's file or record that TFDS should not read; the message names it."""


def refuse_links(version_dir: str) -> None:
    """A symbolic link among the version folder's files is refused (UnsafeOutputError), naming it."""
    with os.scandir(version_dir) as entries:
        for entry in entries:
            if entry.is_symlink():
                raise UnsafeOutputError(
                    f"{entry.path}: is a symbolic link to {os.path.realpath(entry.path)}; a prepared data set "
                    "holds its own files: refusing to read through it (prepare the set again)"
                )


def check_folder(version_dir: str, name: str, version: str | None = None) -> None:
    """Refuses (PreparedDataError naming the file) a prepared version folder TFDS should not read; see the module.

    A folder that does not exist or holds no ``dataset_info.json`` is left to the caller (not prepared yet).
    """
    if "://" in version_dir or not os.path.isdir(version_dir):
        return
    refuse_links(version_dir)
    info_path = os.path.join(version_dir, "dataset_info.json")
    if not os.path.lexists(info_path):
        return
    _check_small_files(version_dir)
    metadata = os.path.join(version_dir, "metadata.json")  # TFDS updates a dict with it
    if os.path.exists(metadata) and not isinstance(read_json_file(metadata, error=PreparedDataError), dict):
        raise PreparedDataError(f"{metadata}: not a JSON object")
    info = _dataset_info(info_path, name, version)
    shards = list(_shards(info_path, info, name))
    total = sum(count for _, count in shards)
    limits.check(info_path, total * RECORD_BYTES, f"listing the {total:,} records it declares", PreparedDataError)
    for shard, count in shards:
        _check_shard(os.path.join(version_dir, shard), count)


def _check_small_files(version_dir: str) -> None:
    """The JSON and text files TFDS reads whole: regular files of at most ``limits.object_limit()`` bytes."""
    limit = limits.object_limit()
    with os.scandir(version_dir) as entries:
        for entry in entries:
            if not entry.name.endswith((".json", ".txt")):
                continue
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise PreparedDataError(f"{entry.path}: not a regular file (a FIFO, device or folder)")
            if st.st_size > limit:
                raise PreparedDataError(
                    f"{entry.path}: {st.st_size:,} bytes, over the {limit:,} a prepared data set's "
                    f"{entry.name} may take (budget / {limits.OBJECT_EXPANSION})"
                )


def _dataset_info(path: str, name: str, version: str | None):
    """``dataset_info.json`` as TFDS parses it (a DatasetInfo proto), its kind and format checked."""
    from google.protobuf import json_format  # pylint: disable=g-import-not-at-top
    from tensorflow_datasets.core.proto import dataset_info_pb2  # pylint: disable=g-import-not-at-top

    value = read_json_file(path, error=PreparedDataError)
    if not isinstance(value, dict):
        raise PreparedDataError(f"{path}: not a JSON object")
    try:
        info = json_format.ParseDict(value, dataset_info_pb2.DatasetInfo(), ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as e:
        raise PreparedDataError(f"{path}: not a TFDS dataset info ({_first_line(e)})") from None
    if info.name != name:
        raise PreparedDataError(f"{path}: describes data set {info.name[:100]!r}, not {name!r}")
    if version is not None and info.version != version:
        raise PreparedDataError(f"{path}: describes version {info.version[:100]!r}, not {version!r}")
    if info.file_format != "array_record":
        raise PreparedDataError(
            f"{path}: fileFormat {info.file_format[:100]!r}; effnet_jax prepares and reads array_record only"
        )
    if len(info.splits) > MAX_SPLITS:
        raise PreparedDataError(f"{path}: {len(info.splits):,} splits, more than the {MAX_SPLITS} accepted")
    return info


def _shards(path: str, info, name: str):
    """``(file name, records declared)`` of every shard of every split of ``info``, refused where TFDS would
    read elsewhere than the version folder's own shard files."""
    seen = set()
    for split in info.splits:
        if not _SPLIT_NAME.fullmatch(split.name) or split.name in seen:
            raise PreparedDataError(f"{path}: split name {split.name[:100]!r} (expected a unique word, like train)")
        seen.add(split.name)
        if split.filepath_template not in ("", TEMPLATE):
            raise PreparedDataError(
                f"{path}: split {split.name} names its files {split.filepath_template[:200]!r}; a prepared set "
                f"holds its own files, named {TEMPLATE!r}"
            )
        lengths = list(split.shard_lengths)
        if len(lengths) > MAX_SHARDS:
            raise PreparedDataError(
                f"{path}: split {split.name} declares {len(lengths):,} shards, more than the {MAX_SHARDS} accepted"
            )
        if any(n < 0 for n in lengths):
            raise PreparedDataError(f"{path}: split {split.name} declares a shard of {min(lengths):,} records")
        for i, count in enumerate(lengths):
            yield f"{name}-{split.name}.array_record-{i:05d}-of-{len(lengths):05d}", count


def _check_shard(path: str, declared: int) -> None:
    """A shard must be a regular file that array_record reads, holding the records its split declares."""
    from array_record.python.array_record_module import ArrayRecordReader  # pylint: disable=g-import-not-at-top

    try:
        mode = os.lstat(path).st_mode
    except OSError as e:
        raise PreparedDataError(f"{path}: a shard dataset_info.json declares, missing ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise PreparedDataError(f"{path}: not a regular file (a FIFO, device or folder)")
    try:
        reader = ArrayRecordReader(path)
        try:
            held = reader.num_records()
        finally:
            reader.close()
    except (RuntimeError, ValueError) as e:
        raise PreparedDataError(f"{path}: a damaged or truncated array_record shard ({_first_line(e)})") from None
    if held != declared:
        raise PreparedDataError(
            f"{path}: holds {held:,} records, but dataset_info.json declares {declared:,} (a damaged or altered shard)"
        )


def read_split(source, where: str, classes: dict[str, int]) -> list[dict]:
    """Every record of a split's data source (TFDS, images left undecoded), each checked; PreparedDataError naming
    ``where`` and the record otherwise. ``classes``: the number of classes of each class-label feature."""
    try:
        records = source.__getitems__(list(range(len(source)))) if len(source) else []
    except _read_errors():
        records = [_read_one(source, i, where) for i in range(len(source))]  # names the one that fails
    for i, record in enumerate(records):
        problem = _record_problem(record, classes)
        if problem:
            raise PreparedDataError(f"{where} record {i}: {problem}")
    return records


def _read_errors() -> tuple:
    """What TFDS raises on a damaged shard or record (protobuf's DecodeError is no ValueError)."""
    from google.protobuf.message import DecodeError  # pylint: disable=g-import-not-at-top

    return (DecodeError, RuntimeError, ValueError, TypeError, KeyError, AttributeError)


def _read_one(source, index: int, where: str) -> dict:
    try:
        return source[index]
    except _read_errors() as e:
        raise PreparedDataError(f"{where} record {index}: cannot be read ({_first_line(e)})") from None


def _first_line(error: BaseException) -> str:
    """The first line of a library's message (array_record's may be empty or pages long)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _record_problem(record, classes: dict[str, int]) -> str | None:
    """What is wrong with one listed record, or None."""
    if not isinstance(record, dict):
        return "not a record of this data set"
    for key, count in classes.items():
        value = record.get(key)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 0 <= value < count:
            return f"{key} {str(value)[:40]} is not a class of this data set (0 to {count - 1})"
    image = record.get("image")
    if not isinstance(image, bytes) or not image:
        return "holds no image bytes"
    for key in ("file_name", "patient_id"):
        value = record.get(key)
        if value is None:
            continue
        if not isinstance(value, bytes) or len(value) > MAX_NAME:
            return f"its {key} is not text of at most {MAX_NAME:,} bytes"
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return f"its {key} is not UTF-8 text"
    return None
