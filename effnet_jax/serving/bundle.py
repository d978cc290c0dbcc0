"""The exported-model directory: its files, their size limits, and model.json checked key by key.

``effnet-export`` writes, and ``serving.load`` reads, a directory holding

    model.json       what the model is and how to feed it (validated here before anything else is read)
    model.stablehlo  the function, serialized by ``jax.export`` (StableHLO bytes, symbolic batch)
    weights.npz      its arrays, in the order of the function's arguments (plain .npy, no pickles)
    gradcam.stablehlo  the guided Grad-CAM function: same arguments, a map per image (absent from
                     folders exported before it existed; such a model scores but draws no maps)
    SHA256SUMS       the SHA-256 of each (``sha256sum -c SHA256SUMS`` checks them)

A directory may come from anyone: model.json is held to 1 MiB and nested at most
``limits.MAX_NESTING`` deep, the weights' declared shapes to the decoded-size budget
(``effnet_jax.limits``); every file is size-checked before it is read and its SHA-256
checked against model.json, and model.json's own against SHA256SUMS, so a truncated,
edited or swapped file is a one-line error naming it rather than a crash deep in a
deserializer or a model that answers with the wrong class names.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import reprlib

from effnet_jax import limits
from effnet_jax.data import transforms
from effnet_jax.labels import validate_class_names  # two: the output is P(the second); more: one per class

FORMAT = "effnet_jax.exported/1"
MODEL_JSON = "model.json"
FUNCTION_FILE = "model.stablehlo"
WEIGHTS_FILE = "weights.npz"
GRADCAM_FILE = "gradcam.stablehlo"
SUMS_FILE = "SHA256SUMS"

MAX_JSON_BYTES = 1 << 20
# EfficientNet-B7's guided Grad-CAM function, lowered for cpu, cuda and tpu, takes 0.9 MB (its weights are
# arguments, in weights.npz). A function holds no weights: a larger one is hand-made, and reading one costs
# time and memory in proportion (a 128 MB one, a constant, took 10 s and 1.1 GB to load).
MAX_FUNCTION_BYTES = 32 << 20
MAX_WEIGHTS_BYTES = 4 << 30  # EfficientNet-B7 in float32 is about 270 MB


class ExportedModelError(ValueError):
    """An exported-model directory that cannot be used; the message names the file at fault."""


def open_limited(path: str, limit: int):
    """Regular file ``path`` opened for reading and its size (``fstat`` of the open descriptor), refused over ``limit``.

    The folder's files are effnet-export's own: a symbolic link among them (to a file outside
    the folder) is refused, not followed; a FIFO or device is refused without blocking
    (``limits.open_regular_file``). The caller closes the file.
    """
    try:
        f = limits.open_regular_file(path, follow_symlinks=False)
    except limits.BudgetError:
        raise ExportedModelError(f"{path}: not a regular file (a FIFO, device or folder)") from None
    except OSError as e:
        if e.errno == errno.ELOOP and os.path.islink(path):
            raise ExportedModelError(f"{path}: is a symbolic link; an exported folder holds its own files") from e
        raise ExportedModelError(f"{path}: cannot read ({e.strerror or e})") from e
    size = os.fstat(f.fileno()).st_size
    if size > limit:
        f.close()
        raise ExportedModelError(f"{path}: {size} bytes, more than the {limit} an exported model may hold")
    return f, size


def _read_at_most(f, path: str, limit: int) -> bytes:
    data = f.read(limit + 1)  # bounded even if the file grows while being read
    if len(data) > limit:
        raise ExportedModelError(f"{path}: grew past {limit} bytes while being read")
    return data


def read_limited(path: str, limit: int) -> bytes:
    """The bytes of regular file ``path`` (not a link), refused when larger than ``limit``."""
    f, _ = open_limited(path, limit)
    with f:
        return _read_at_most(f, path, limit)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_checked(directory: str, meta: dict, role: str, limit: int, inspect=None) -> bytes:
    """The file model.json lists under ``files[role]``, after its size and SHA-256 match the record.

    The size is compared before a byte is read, and the read stops past the recorded size, so a
    file larger than model.json says costs nothing to refuse. ``inspect(f, path)``, when given, is
    called on the open file first (to check what its headers declare before the whole is read).
    """
    entry = meta["files"][role]
    path = os.path.join(directory, entry["name"])
    f, size = open_limited(path, limit)
    with f:
        data = b""
        if size == entry["bytes"]:
            if inspect is not None:
                inspect(f, path)
                f.seek(0)
            data = f.read(size + 1)  # one byte past the recorded size tells a file that grew meanwhile
    if len(data) != entry["bytes"] or sha256(data) != entry["sha256"]:
        shown = size if size != entry["bytes"] else len(data)
        raise ExportedModelError(
            f"{path}: does not match {os.path.join(directory, MODEL_JSON)} ({shown} bytes, expected "
            f"{entry['bytes']}; or a different SHA-256): truncated, corrupted or from another export"
        )
    return data


# -- model.json ----------------------------------------------------------------------------------
# (dotted key, accepted types, check or None). Keys not listed are informative and not read.
_NUMBER = (int, float)
_SCHEMA = [
    ("format", str, None),
    ("class_names", list, lambda v: _valid_names(v)),
    ("positive_class", (str, type(None)), None),
    ("input.image_size", int, lambda v: 8 <= v <= 4096),
    ("input.center_crop", _NUMBER, lambda v: 0 < v <= 1),
    ("input.max_size", int, lambda v: 8 <= v <= 16384),
    ("input.dtype", str, lambda v: v == "uint8"),
    ("threshold.value", (type(None), int, float), lambda v: v is None or 0 <= v <= 1),
    ("threshold.rule", str, None),
    # Finite: JSON's Infinity parses, and would be echoed in every record (not JSON; effnet-serve's 500).
    ("temperature", (type(None), int, float), lambda v: v is None or (math.isfinite(v) and v > 0)),
    ("files.function.name", str, lambda v: v == FUNCTION_FILE),
    ("files.weights.name", str, lambda v: v == WEIGHTS_FILE),
    ("files.function.bytes", int, lambda v: 0 < v <= MAX_FUNCTION_BYTES),
    ("files.weights.bytes", int, lambda v: 0 < v <= MAX_WEIGHTS_BYTES),
    ("files.function.sha256", str, lambda v: re.fullmatch("[0-9a-f]{64}", v) is not None),
    ("files.weights.sha256", str, lambda v: re.fullmatch("[0-9a-f]{64}", v) is not None),
]
# Checked as above when ``files.gradcam`` is present (an older export has no Grad-CAM function).
_GRADCAM_SCHEMA = [
    ("files.gradcam.name", str, lambda v: v == GRADCAM_FILE),
    ("files.gradcam.bytes", int, lambda v: 0 < v <= MAX_FUNCTION_BYTES),
    ("files.gradcam.sha256", str, lambda v: re.fullmatch("[0-9a-f]{64}", v) is not None),
]

# Checked as above when present (exports before data.equalize existed have no such key: "none"; effnet-serve
# lists the keys of "model" and "training" in GET /v1/model).
_OPTIONAL_SCHEMA = [
    ("input.equalize", str, lambda v: v in transforms.EQUALIZE_MODES),
    ("model", dict, None),
    ("training", dict, None),
]


def _valid_names(names) -> bool:
    try:
        validate_class_names(names, "class_names")
    except ValueError:
        return False
    return True


def _lookup(meta: dict, dotted: str):
    value = meta
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def read_model_json(directory: str) -> dict:
    """``DIR/model.json``, parsed and checked against the schema above."""
    path = os.path.join(directory, MODEL_JSON)
    if not os.path.isdir(directory):
        raise ExportedModelError(f"{directory}: not a directory (expected one written by effnet-export)")
    if not os.path.exists(path):
        raise ExportedModelError(f"{path}: missing; {directory} was not written by effnet-export")
    try:
        meta = json.loads(read_limited(path, MAX_JSON_BYTES).decode("utf-8"))
    except RecursionError:
        raise ExportedModelError(f"{path}: JSON nested deeper than {limits.MAX_NESTING} levels") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ExportedModelError(f"{path}: not valid JSON ({e})") from e
    if limits.json_nesting(meta) > limits.MAX_NESTING:
        raise ExportedModelError(f"{path}: JSON nested deeper than {limits.MAX_NESTING} levels")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ExportedModelError(f"{path}: format {found!r}, expected {FORMAT!r} (written by effnet-export)")
    has_gradcam = isinstance(meta.get("files"), dict) and "gradcam" in meta["files"]
    optional = {key for key, _, _ in _OPTIONAL_SCHEMA}
    for key, types, check in _SCHEMA + (_GRADCAM_SCHEMA if has_gradcam else []) + _OPTIONAL_SCHEMA:
        try:
            value = _lookup(meta, key)
        except KeyError:
            if key in optional:
                continue
            raise ExportedModelError(f"{path}: missing key {key!r}") from None
        if isinstance(value, bool) or not isinstance(value, types) or (check is not None and not check(value)):
            raise ExportedModelError(f"{path}: bad value for {key!r}: {reprlib.repr(value)}")
    if len(meta["class_names"]) == 2:
        if meta["positive_class"] != meta["class_names"][1]:
            raise ExportedModelError(f"{path}: positive_class must be the second of class_names")
        if meta["threshold"]["value"] is None:
            raise ExportedModelError(f"{path}: bad value for 'threshold.value': None (two classes need a threshold)")
    elif meta["positive_class"] is not None or meta["threshold"]["value"] is not None:
        raise ExportedModelError(f"{path}: more than two class_names: positive_class and threshold.value must be null")
    return meta


# -- SHA256SUMS ------------------------------------------------------------------------------------
def sums_text(files: dict[str, bytes]) -> str:
    """``sha256sum``'s format for ``{name: bytes}``: one ``<hex>  <name>`` line each, sorted by name."""
    return "".join(f"{sha256(data)}  {name}\n" for name, data in sorted(files.items()))


def check_model_json(directory: str) -> None:
    """Refuses a model.json whose SHA-256 is not the one SHA256SUMS records (edited after export)."""
    sums_path = os.path.join(directory, SUMS_FILE)
    json_path = os.path.join(directory, MODEL_JSON)
    if not os.path.lexists(sums_path):
        raise ExportedModelError(
            f"{sums_path}: missing, so {json_path} cannot be checked (exported by an older effnet-export?); "
            "export the run again"
        )
    recorded = {}
    for line in read_limited(sums_path, MAX_JSON_BYTES).decode("utf-8", "replace").splitlines():
        digest, _, name = line.partition("  ")
        recorded[name.strip()] = digest.strip()
    actual = sha256(read_limited(json_path, MAX_JSON_BYTES))
    if recorded.get(MODEL_JSON) != actual:
        raise ExportedModelError(
            f"{json_path}: SHA-256 {actual[:12]}... is not the one {sums_path} records: model.json was edited "
            "after export (class names, threshold, input size?); export the run again"
        )
