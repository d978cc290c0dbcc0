"""Readers that turn a weight file into a flat ``{name: numpy array}`` dict, in the file's own layout.

None of them needs PyTorch or TensorFlow: ``.pth``/``.bin`` files (zip and legacy
layouts) are unpickled only by restricted unpicklers that rebuild tensors and
nothing else (so a weight file cannot run code), and every tensor's offset, size
and stride is checked against its storage before a view is taken (so a file
cannot make us read outside it); safetensors and Keras HDF5 are read with their
own libraries.

What a file declares it will expand to is held to the decoded-size budget
(``effnet_jax.limits``) before any of it is read: tensor storages and the copies of
non-contiguous views, a pickle's objects and memo (found by scanning its opcodes before
unpickling), safetensors' header offsets, HDF5 datasets' shapes (fill values included) and
their compressed chunks. HDF5 files never reach outside themselves: external storage,
external links, soft links to other links, virtual datasets and object or variable-length
types are refused, naming the dataset.
"""

from __future__ import annotations

import collections
import functools
import io
import json
import lzma
import math
import os
import pickle
import pickletools
import reprlib
import stat
import zipfile
import zlib
from pathlib import Path

import numpy as np

import effnet_jax.limits as limits
import effnet_jax.zip_directory as zip_directory

SUPPORTED_FORMATS = {
    "safetensors": "timm / Hugging Face safetensors (.safetensors)",
    "pytorch": "PyTorch state dict saved by torch>=1.6 (.pth, .pt, .bin): timm or efficientnet_pytorch key naming",
    "keras_h5": "Keras applications HDF5 (.h5): weights-only or whole-model, legacy h5 layout",
}


class WeightFileError(ValueError):
    """A weight file that cannot be read or does not fit the model."""


def detect_format(path: Path) -> str:
    """Tells the format of a weight file from its magic bytes (falling back to its suffix)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise WeightFileError(f"Cannot open weight file {path}: {e.strerror or e}") from e
    if head.startswith(b"PK"):
        return "pytorch"
    if head.startswith(b"\x89HDF"):
        return "keras_h5"
    if len(head) == 8 and path.suffix == ".safetensors":
        return "safetensors"
    if path.suffix in (".pth", ".pt", ".bin"):
        return "pytorch"
    # A file named for a format it does not hold (empty, cut short, another format) says so, not "unknown format".
    if path.suffix == ".safetensors":
        raise WeightFileError(f"{path}: {len(head)} bytes, too short to be a safetensors file (empty or truncated)")
    if path.suffix in (".h5", ".hdf5"):
        raise WeightFileError(f"{path}: no HDF5 signature at its start; not a Keras .h5 file (empty or damaged?)")
    supported = "; ".join(f"{k}: {v}" for k, v in SUPPORTED_FORMATS.items())
    raise WeightFileError(f"Unknown weight format for {path} (suffix {path.suffix!r}). Supported: {supported}.")


def read_weights(path: str | Path) -> tuple[dict[str, np.ndarray], str]:
    """Reads any supported weight file; returns ``(tensors, format)``."""
    path = Path(path)
    if not path.exists():
        raise WeightFileError(f"Weight file {path} does not exist.")
    # A FIFO would block the first read forever and a device (a link to /dev/zero) never ends:
    # only regular files are weight files.
    if not path.is_file():
        raise WeightFileError(f"Weight file {path} is not a regular file (a FIFO, device or folder).")
    fmt = detect_format(path)
    reader = {"safetensors": read_safetensors, "pytorch": read_pytorch, "keras_h5": read_keras_h5}[fmt]
    return reader(path), fmt


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    _check_safetensors(path)
    try:
        tensors = dict(load_file(str(path)))
    except Exception as e:  # safetensors raises its own error types for truncated headers and bodies
        raise WeightFileError(f"Cannot read safetensors file {path}: {e}") from e
    for name, value in tensors.items():
        if value.dtype.name == "bfloat16":  # ml_dtypes' bfloat16 (numpy kind 'V'): a real number, read as float32
            tensors[name] = value = value.astype(np.float32)
        # safetensors holds complex numbers too: cast to the model's float32 they would lose a part silently.
        if value.dtype.kind not in "biuf":
            raise WeightFileError(f"{path}: tensor {_short(name)} is {value.dtype}; weights are real numbers")
    return tensors


# A weight file holds a tensor per weight (EfficientNet-B7: about 1,000; a training checkpoint's state dict a
# few times that). Past this many names every later step (finite-value checks, name maps) only costs time:
# a pickle may list one tensor under hundreds of thousands of names, a safetensors header as many empty ones.
MAX_TENSORS = 1 << 16


def check_tensor_count(count: int, path, what: str = "tensors") -> None:
    """Refuses (``WeightFileError`` naming ``path``) a weight file of more than ``MAX_TENSORS`` tensors."""
    if count > MAX_TENSORS:
        raise WeightFileError(
            f"{path}: {count:,} {what}, more than the {MAX_TENSORS:,} a weight file of EfficientNet holds"
        )


# The safetensors dtypes safetensors.numpy reads into numpy arrays (complex ones are refused after reading).
_SAFETENSORS_DTYPES = frozenset(
    {"F64", "F32", "F16", "BF16", "I64", "U64", "I32", "U32", "I16", "U16", "I8", "U8", "BOOL", "C64"}
)


def _check_safetensors(path: Path) -> None:
    """Refuses a header larger or deeper than allowed, or declaring more tensor bytes than the file or budget hold."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < length <= min(size - 8, limits.object_limit()):
            raise WeightFileError(
                f"Cannot read safetensors file {path}: its header declares {length:,} bytes "
                f"(the file holds {size:,}, a header may take {limits.object_limit():,})"
            )
        duplicates = []
        try:
            header = json.loads(f.read(length), object_pairs_hook=lambda pairs: _unique_pairs(pairs, duplicates))
        except (ValueError, RecursionError) as e:
            raise WeightFileError(
                f"Cannot read safetensors file {path}: bad JSON header ({type(e).__name__})"
            ) from None
    if not isinstance(header, dict):
        raise WeightFileError(f"Cannot read safetensors file {path}: its header is not a JSON object")
    if duplicates:  # json and the safetensors library each keep one of them: which tensor is meant is unknown
        raise WeightFileError(f"Cannot read safetensors file {path}: its header names {_short(duplicates[0])} twice")
    check_tensor_count(len(header) - ("__metadata__" in header), path, "tensors in its header")
    declared = 0
    for name, entry in header.items():
        dtype = entry.get("dtype") if isinstance(entry, dict) and name != "__metadata__" else None
        if isinstance(dtype, str) and dtype not in _SAFETENSORS_DTYPES:
            # float8 / float4 / float6: the safetensors library asks numpy for a type it lacks.
            raise WeightFileError(
                f"Cannot read safetensors file {path}: tensor {_short(name)} is stored as {dtype}, a type this "
                f"reader does not handle (supported: {', '.join(sorted(_SAFETENSORS_DTYPES))})"
            )
        offsets = entry.get("data_offsets") if isinstance(entry, dict) and name != "__metadata__" else None
        if isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets):
            declared += max(0, offsets[1] - offsets[0])
    if declared > size - 8 - length:
        raise WeightFileError(
            f"Cannot read safetensors file {path}: its header declares {declared:,} bytes of tensors, the file "
            f"holds {size - 8 - length:,} after the header"
        )
    limits.check(path, declared, f"{len(header)} safetensors tensors", WeightFileError)


def _unique_pairs(pairs, duplicates: list) -> dict:
    """A JSON object's ``pairs`` as a dict; keys met twice are appended to ``duplicates``."""
    found = {}
    for key, value in pairs:
        if key in found:
            duplicates.append(key)
        found[key] = value
    return found


# --- JSON files that came with weights or runs -------------------------------------------------


def parse_json(text: str | bytes, where: str, error: type[Exception] = ValueError):
    """``text`` parsed, or ``error`` naming ``where`` (a file, or a file and line) when it is not JSON or nests too deep.

    A downloaded run or converted folder may hold anything: Python's parser overflows its
    recursion limit on ``[[[...]]]`` (a RecursionError, not a ValueError), and a structure
    nested deeper than ``limits.MAX_NESTING`` only serves to exhaust the stack of whatever
    walks it next (ml_collections, the model card), so both are one line naming ``where``.
    """
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{where}: JSON nested deeper than {limits.MAX_NESTING} levels") from None
    except ValueError as e:  # UnicodeDecodeError included
        raise error(f"{where}: not valid JSON ({e})") from None
    if limits.json_nesting(value) > limits.MAX_NESTING:
        raise error(f"{where}: JSON nested deeper than {limits.MAX_NESTING} levels")
    return value


def read_json_file(path, limit: int | None = None, error: type[Exception] = ValueError):
    """The JSON value of regular file ``path`` (at most ``limit`` bytes, default ``limits.object_limit()``).

    Refused with ``error`` naming the file, before it is read, when it is a FIFO or device (a
    read would block or never end) or larger than ``limit`` (a sparse file of GBs costs nothing
    to make); then as ``parse_json``.
    """
    limit = limits.object_limit() if limit is None else limit
    try:  # checked on the open file: a FIFO swapped in after a stat cannot block the read
        f = limits.open_path(path)  # a limits.FoundInFolder path: a link out of its folder is refused
    except limits.BudgetError as e:
        raise error(str(e)) from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise error(f"{path}: {size:,} bytes, over the {limit:,} a JSON file of effnet_jax may take")
        data = f.read(limit + 1)  # bounded even if the file grows while being read
    if len(data) > limit:
        raise error(f"{path}: grew past {limit:,} bytes while being read")
    return parse_json(data, str(path), error)


# The JSON files orbax parses, with Python's json and whole, in one saved PyTree folder (a converted folder's
# variables/, a run's checkpoints/<step>/state/), besides array_metadatas/<process>.
ORBAX_JSON = ("_CHECKPOINT_METADATA", "_METADATA", "_sharding", "manifest.json")


def check_orbax_json(folder, error: type[Exception] = ValueError) -> None:
    """Reads each JSON file orbax would read in the saved PyTree ``folder`` as ``read_json_file`` does.

    Orbax reads them whole: a sparse ``_METADATA`` of GBs would be read into memory, and one
    nested past the recursion limit is a RecursionError deep inside it. Refused first, with
    ``error`` naming the file. Call ``check_tree`` first (FIFOs, links out).
    """
    names = [os.path.join(folder, name) for name in ORBAX_JSON]
    metadatas = os.path.join(folder, "array_metadatas")
    if os.path.isdir(metadatas):
        names += [os.path.join(metadatas, name) for name in sorted(os.listdir(metadatas))]
    for path in names:
        if os.path.lexists(path):
            value = read_json_file(path, error=error)
            if os.path.basename(path) == "_METADATA":
                _check_tree_metadata(value, path, error)


# A saved PyTree of effnet_jax holds an array per variable and optimizer slot: EfficientNet-B7's train
# state with Adam and EMA about 3,600. Orbax then opens each one the metadata lists (a ms apiece, even
# when it does not exist: 100,000 listed in a 14 MB _METADATA took a minute and 1.2 GB).
MAX_CHECKPOINT_ARRAYS = 1 << 13


def _check_tree_metadata(value, path, error: type[Exception]) -> None:
    """Refuses a ``_METADATA`` listing more than ``MAX_CHECKPOINT_ARRAYS`` arrays or naming one by a path.

    Orbax names each array's storage by its keys joined with dots, under the checkpoint folder:
    in a checkpoint without OCDBT (no ``manifest.ocdbt``), a key ``/home/x/ckpt/w`` (absolute)
    makes tensorstore read the array stored there, wherever it is. Keys of effnet_jax's trees are
    variable and module names, which never hold a path separator.
    """
    tree = value.get("tree_metadata") if isinstance(value, dict) else None
    if not isinstance(tree, dict):
        return  # not orbax's layout: orbax refuses it, naming the checkpoint
    if len(tree) > MAX_CHECKPOINT_ARRAYS:
        raise error(
            f"{path}: lists {len(tree):,} arrays, more than the {MAX_CHECKPOINT_ARRAYS:,} a checkpoint of "
            "effnet_jax holds"
        )
    for entry in tree.values():
        keys = entry.get("key_metadata") if isinstance(entry, dict) else None
        for key in keys if isinstance(keys, list) else []:
            name = key.get("key") if isinstance(key, dict) else None
            if isinstance(name, str) and any(c in name for c in "/\\\0"):
                raise error(
                    f"{path}: an array keyed {_short(name)}: a path, not a variable name (orbax would read the "
                    "array stored there, outside the checkpoint); refused"
                )


def check_tree(root, error: type[Exception] = ValueError) -> None:
    """Refuses, with ``error`` naming the entry, a folder that reaches outside itself or holds what a read blocks on.

    Orbax and tensorstore follow links and open whatever the folder names: a downloaded
    checkpoint whose files link to ``/home/...`` would be read from there, and a FIFO
    would block the read forever. Links that stay inside ``root`` are followed as usual.
    """
    top = os.path.realpath(root)
    for folder, dirs, files in os.walk(root):  # os.walk does not descend into linked folders
        for name in dirs + files:
            entry = os.path.join(folder, name)
            st = os.lstat(entry)
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(entry)
                if os.path.commonpath([top, target]) != top:
                    raise error(f"{entry}: a link to {target}, outside {root}; refusing to read through it")
                if not os.path.exists(target):
                    raise error(f"{entry}: a link to {target}, which does not exist")
                st = os.stat(target)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise error(f"{entry}: not a regular file or folder (a FIFO, socket or device)")


# --- PyTorch zip archives ---------------------------------------------------------------------

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        if name == "BFloat16Storage":
            import ml_dtypes

            self.dtype = np.dtype(ml_dtypes.bfloat16)
        elif name in _STORAGE_DTYPES:
            self.dtype = np.dtype(_STORAGE_DTYPES[name])
        else:
            raise pickle.UnpicklingError(f"unsupported tensor storage type torch.{name}")


class _Storage:
    """A tensor storage whose bytes are filled in after unpickling (legacy files store them last)."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel, self.array = dtype, numel, None


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_int64(x: int) -> bool:
    return -(1 << 63) <= x < 1 << 63


class _PendingTensor:
    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size = storage, offset, tuple(size)
        # A dimension of one element is never stepped over: its stride, whatever the file says,
        # must not reach as_strided (a huge one would overflow its byte arithmetic).
        self.stride = tuple(0 if n == 1 and _is_int(s) else s for n, s in zip(size, stride)) + tuple(
            stride[len(size) :]
        )

    def copy_bytes(self) -> int:
        """Bytes ``materialise`` allocates beyond its storage: none for a contiguous view, else a copy."""
        expected, step = [], 1
        for n in reversed(self.size):
            expected.append(step if n > 1 else 0)
            step *= n
        contiguous = tuple(reversed(expected)) == self.stride
        return 0 if contiguous or 0 in self.size else math.prod(self.size) * self.storage.dtype.itemsize

    def materialise(self) -> np.ndarray:
        data = self.storage.array
        if data is None:
            raise WeightFileError("a tensor's storage has no data in the file")
        self.check_bounds(len(data))
        if not self.size:
            return np.array(data[self.offset])
        if 0 in self.size:
            return np.zeros(self.size, data.dtype)
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=tuple(s * itemsize for s in self.stride)
        )
        return np.ascontiguousarray(view)

    def check_bounds(self, length: int):
        # as_strided trusts its arguments: an offset, size or stride the storage cannot
        # hold would read process memory (or crash). The file's word is checked here.
        if not all(_is_int64(n) for n in (self.offset, *self.size, *self.stride)):
            # torch holds them as int64; a larger one (a pickle's LONG4 takes megabytes) is not a tensor's,
            # and printing it would fail ("Exceeds the limit (4300 digits) for integer string conversion").
            raise WeightFileError("tensor offset/size/stride beyond 64-bit integers")
        what = f"tensor of size {self.size}, stride {self.stride}, offset {self.offset}"
        if len(self.size) != len(self.stride):
            raise WeightFileError(f"{what}: size and stride have different lengths")
        if self.offset < 0 or any(n < 0 for n in self.size) or any(s < 0 for s in self.stride):
            raise WeightFileError(f"{what}: negative offset, size or stride")
        if 0 in self.size:
            if any(n >= 1 << 31 for n in self.size):
                raise WeightFileError(f"{what}: a dimension of {max(self.size):,} elements")
            return
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= length:
            raise WeightFileError(f"{what} reaches element {last}, beyond its storage of {length} elements")
        # Broadcast views (stride 0) could expand a small storage into any amount of memory.
        if math.prod(self.size) > length:
            raise WeightFileError(f"{what} has more elements than its storage of {length}")


def _rebuild_tensor(storage, offset, size, stride, *unused):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"tensor storage is a {type(storage).__name__}, not a storage reference")
    if not (
        _is_int(offset)
        and isinstance(size, tuple)
        and isinstance(stride, tuple)
        and all(_is_int(n) for n in size + stride)
    ):
        raise pickle.UnpicklingError(f"tensor offset/size/stride are not integers: {offset!r}, {size!r}, {stride!r}")
    return _PendingTensor(storage, offset, size, stride)


def _rebuild_parameter(data, *unused):
    return data


class _TensorUnpickler(pickle.Unpickler):
    """Rebuilds tensors as numpy arrays; refuses every other global, so a file cannot run code."""

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch", "Size"): tuple,
    }

    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            target = self._ALLOWED[(module, name)]
            # A fresh callable per lookup: BUILD on what GLOBAL pushed sets attributes on it, and on
            # this module's own functions that would change them for every file read after this one.
            return target if isinstance(target, type) else functools.partial(target)
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        raise pickle.UnpicklingError(f"{self.path}: refusing to unpickle {module}.{name} (only tensors are read)")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5:
            raise pickle.UnpicklingError(f"{self.path}: unsupported persistent id {type(pid).__name__}")
        kind, storage_type, key, _location, numel, *view = pid
        if kind != "storage" or (view and view[0] is not None):
            raise pickle.UnpicklingError(f"{self.path}: unsupported persistent id {pid[:1]}")
        if (
            not isinstance(storage_type, _StorageType)
            or not isinstance(key, (str, int))
            or not _is_int(numel)
            or not 0 <= numel < 1 << 63
        ):
            raise pickle.UnpicklingError(f"{self.path}: malformed storage reference (type, key, element count)")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, numel)
        elif (self.storages[key].dtype, self.storages[key].numel) != (storage_type.dtype, numel):
            raise pickle.UnpicklingError(f"{self.path}: storage {key!r} is declared twice, differently")
        return self.storages[key]


class _PlainUnpickler(pickle.Unpickler):
    """For the legacy header fields (numbers, strings, dicts, lists): no global, no persistent id."""

    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"{self.path}: refusing to unpickle {module}.{name} in the file header")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"{self.path}: unexpected persistent id in the file header")


def _header_field(buf: bytes, start: int, path: Path, what: str, types: tuple):
    unpickler, value, end = _unpickle(buf, start, _PlainUnpickler, path, f"legacy header field {what}")
    if not isinstance(value, types) or isinstance(value, bool):
        raise WeightFileError(
            f"{path}: legacy header field {what} is a {type(value).__name__}, "
            f"expected {' or '.join(t.__name__ for t in types)}"
        )
    return unpickler, value, end


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother = 2, 60, 60


def _short(value) -> str:
    """A repr of a key from the file that stays one short line however the value is nested."""
    return _repr.repr(value)


def _walk(obj, path: Path, visit, seen: dict, depth: int = 0, key=""):
    """``obj`` with every tensor replaced by ``visit(tensor, key)``; each shared object is handled once.

    Pickles may share one dict through the memo under many keys (a "billion laughs"):
    ``seen`` keeps each object's result by identity, so the work is the pickle's size, not
    the size of the tree it unfolds to. Nesting deeper than ``limits.MAX_NESTING`` is refused.
    """
    if id(obj) in seen:
        return seen[id(obj)][1]
    if isinstance(obj, _PendingTensor):
        try:
            result = visit(obj)
        except (WeightFileError, OverflowError, ValueError) as e:
            raise WeightFileError(f"{path}: key {_short(key)}: {e}") from None
    elif isinstance(obj, dict):
        if depth >= limits.MAX_NESTING:
            raise WeightFileError(
                f"{path}: dicts nested deeper than {limits.MAX_NESTING} levels (at key {_short(key)})"
            )
        result = type(obj)((k, _walk(v, path, visit, seen, depth + 1, k)) for k, v in obj.items())
    else:
        return obj
    seen[id(obj)] = (obj, result)  # the object itself is kept alive so that its id stays its own
    return result


def _materialise(obj, path: Path):
    return _walk(obj, path, lambda tensor: tensor.materialise(), {})


def _check_declared(obj, storages: dict[str, _Storage], path: Path) -> None:
    """Checks every tensor against its storage's declared size, and the total against the budget, before reading."""
    copies = []

    def visit(tensor: _PendingTensor):
        tensor.check_bounds(tensor.storage.numel)
        copies.append(tensor.copy_bytes())
        return tensor

    _walk(obj, path, visit, {})
    stored = sum(s.numel * s.dtype.itemsize for s in storages.values())
    limits.check(
        path, stored + sum(copies), f"{len(storages)} tensor storages and {len(copies)} tensors", WeightFileError
    )


# Opcodes that add to the container below their arguments: it nests its items, it is not nested in them.
_IN_PLACE = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})


def _unpickle(buf: bytes, start: int, unpickler_type, path: Path, what: str):
    """The unpickler, the object pickled at ``buf[start:]`` and the offset where its pickle ends.

    Its opcodes are scanned first, following the pickle machine's stack: each argument must
    be present in ``buf`` (the unpickler allocates a declared length before reading it);
    what unpickling may allocate (objects, strings, the memo sized by its largest index) is
    held to the budget; objects may nest at most ``limits.MAX_NESTING`` deep (hashing a
    tuple nested a million deep overflows the C stack).
    """
    stream = io.BytesIO(buf)
    stream.seek(start)
    cost, memo_size, stack, memo = 0, 0, [], {}
    try:
        for op, arg, _ in pickletools.genops(stream):
            cost += 96 + (len(arg) if isinstance(arg, (bytes, bytearray, str)) else 0)
            name = op.name
            if name == "MARK":
                stack.append(None)
            elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                index = len(memo) if name == "MEMOIZE" else arg
                memo[index] = (stack[-1] or 0) if stack else 0
                memo_size = max(memo_size, index + 1)
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg, 0))
            elif name == "DUP":
                stack.append((stack[-1] or 0) if stack else 0)
            else:
                before = op.stack_before
                items = []
                if pickletools.markobject in before:
                    while stack and stack[-1] is not None:
                        items.append(stack.pop())
                    if stack:
                        stack.pop()
                    below = before.index(pickletools.markobject)
                else:
                    below = len(before)
                items += [(stack.pop() or 0) if stack else 0 for _ in range(below)]
                if op.stack_after:
                    if name in _IN_PLACE and items:
                        depth = max([items[-1]] + [1 + d for d in items[:-1]])
                    else:
                        depth = 1 + max(items) if items else 0
                    if depth > limits.MAX_NESTING:
                        raise WeightFileError(f"{path}: {what} nests objects deeper than {limits.MAX_NESTING} levels")
                    stack.append(depth)
    except ValueError as e:
        if isinstance(e, WeightFileError):
            raise
        raise WeightFileError(f"{path}: {what} is not a complete pickle ({e})") from None
    end = stream.tell()
    limits.check(path, cost + 16 * memo_size, f"{what} (a pickle of {end - start:,} bytes)", WeightFileError)
    stream.seek(start)
    unpickler = unpickler_type(stream, path)
    return unpickler, unpickler.load(), end


# torch.save writes a member per tensor storage plus a few records; EfficientNet-B7's state dict
# has about a thousand storages, and a training checkpoint with optimizer state a few times that.
MAX_TORCH_ZIP_MEMBERS = 1 << 16
_TORCH_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


def _load_zip(path: Path):
    bounds = dict(max_entries=MAX_TORCH_ZIP_MEMBERS, what="a PyTorch checkpoint", error=WeightFileError)
    with zip_directory.open_zip(path, **bounds) as archive:
        names = archive.namelist()
        if len(set(names)) != len(names):
            # zipfile reads the last of two members of one name, torch's reader may take the first:
            # which data.pkl or storage is meant is unknown.
            twice = next(n for n, c in collections.Counter(names).items() if c > 1)
            raise WeightFileError(f"{path}: the zip lists {_short(twice)} twice; which of them is meant is unknown")
        # torch.save stores its members; zipfile inflates a bzip2 or LZMA chunk whole, past the
        # size a member declares (1 kB of bzip2 is 1.5 GB): only stored and deflated are read.
        odd = next((i for i in archive.infolist() if i.compress_type not in _TORCH_ZIP_METHODS), None)
        if odd is not None:
            raise WeightFileError(
                f"{path}: {_short(odd.filename)} is compressed with zip method {odd.compress_type}; "
                "a PyTorch checkpoint's members are stored or deflated"
            )
        pickles = [n for n in names if n.endswith("/data.pkl")]
        if not pickles:
            raise WeightFileError(f"{path}: no data.pkl inside; not a PyTorch checkpoint.")
        prefix = pickles[0][: -len("/data.pkl")]
        info = archive.getinfo(pickles[0])
        if info.file_size > limits.object_limit():
            raise WeightFileError(
                f"{path}: {pickles[0]} declares {info.file_size:,} bytes, more than the {limits.object_limit():,} "
                f"a weight file's pickle may take (the decoded-size budget / {limits.OBJECT_EXPANSION})"
            )
        with archive.open(info) as f:
            raw = f.read(info.file_size)  # zipfile stops at the declared size
        unpickler, obj, _ = _unpickle(raw, 0, _TensorUnpickler, path, pickles[0])
        del raw
        _check_declared(obj, unpickler.storages, path)
        order = _byteorder(archive, f"{prefix}/byteorder", path)
        for key, storage in unpickler.storages.items():
            name = f"{prefix}/data/{key}"
            expected = storage.numel * storage.dtype.itemsize
            # Checked before reading: a member larger than its tensors declare is a zip bomb or junk.
            if archive.getinfo(name).file_size != expected:
                raise WeightFileError(
                    f"{path}: storage {name} holds {archive.getinfo(name).file_size} bytes, its "
                    f"tensors declare {storage.numel} x {storage.dtype} = {expected} bytes"
                )
            with archive.open(name) as member:
                raw = member.read(expected)
            if len(raw) != expected:
                raise WeightFileError(f"{path}: storage {name} is cut short ({len(raw)} of {expected} bytes)")
            # torch.save writes storages in the saving machine's byte order, named in the byteorder record.
            stored = storage.dtype.newbyteorder(order)
            storage.array = np.frombuffer(raw, dtype=stored, count=storage.numel).astype(storage.dtype, copy=False)
    return obj


def _byteorder(archive: zipfile.ZipFile, name: str, path: Path) -> str:
    """``'<'`` or ``'>'``: the byte order a torch zip's ``byteorder`` record names (little when it has none, as torch reads it)."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        return "<"
    with archive.open(info) as f:
        text = f.read(16)
    if text not in (b"little", b"big"):
        raise WeightFileError(f"{path}: {name} says {text[:16]!r}; expected 'little' or 'big'")
    return "<" if text == b"little" else ">"


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _load_legacy(path: Path):
    # torch<1.6 layout: pickled magic, version, sys info, the object, the storage keys,
    # then each storage as an int64 element count followed by its raw bytes.
    # Every field goes through a restricted unpickler: plain pickle.load would run any
    # global the file names (os.system) before we could look at what it holds.
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(limits.object_limit())  # the pickles come first; a longer run of them is refused
        try:
            _, magic, pos = _unpickle(head, 0, _PlainUnpickler, path, "the magic number")
        except (WeightFileError, pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as e:
            raise WeightFileError(f"{path} is neither a zip nor a legacy PyTorch file ({e}).") from e
        if not _is_int(magic) or magic != _LEGACY_MAGIC:
            raise WeightFileError(f"{path} is neither a zip nor a legacy PyTorch file (bad magic number).")
        _, _, pos = _header_field(head, pos, path, "protocol version", (int,))
        _, _, pos = _header_field(head, pos, path, "sys info", (dict,))
        unpickler, obj, pos = _unpickle(head, pos, _TensorUnpickler, path, "the state dict")
        _, keys, pos = _header_field(head, pos, path, "storage keys", (list,))
        del head
        if not all(isinstance(k, str) or (_is_int(k) and _is_int64(k)) for k in keys):
            raise WeightFileError(f"{path}: legacy storage keys must be strings")
        # One count and one storage are read per key: a list repeating a key of an empty storage
        # millions of times (2 bytes each in the pickle, through its memo) took seconds to walk.
        if len(keys) > MAX_TORCH_ZIP_MEMBERS:
            raise WeightFileError(
                f"{path}: lists {len(keys):,} storages, more than the {MAX_TORCH_ZIP_MEMBERS:,} a PyTorch file holds"
            )
        if len({str(k) for k in keys}) != len(keys):
            raise WeightFileError(f"{path}: its legacy storage keys name a storage twice (torch.save writes each once)")
        _check_declared(obj, unpickler.storages, path)
        f.seek(pos)
        for key in keys:
            storage = unpickler.storages[str(key)]
            count = int(np.frombuffer(f.read(8), "<i8")[0])
            if count != storage.numel:
                raise WeightFileError(
                    f"{path}: storage {key} holds {count} elements, its tensors declare {storage.numel}"
                )
            nbytes = count * storage.dtype.itemsize
            if nbytes > size - f.tell():  # before reading: the count is the file's word
                raise WeightFileError(
                    f"{path}: storage {key} declares {nbytes:,} bytes, the file holds {size - f.tell():,} after it"
                )
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise EOFError(f"storage {key} is cut short")
            storage.array = np.frombuffer(raw, dtype=storage.dtype, count=count)
    return obj


def read_pytorch(path: Path) -> dict[str, np.ndarray]:
    """Reads a ``torch.save`` file of a state dict (zip or legacy layout), without importing torch."""
    try:
        obj = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
        obj = _materialise(obj, path) if isinstance(obj, dict) else obj
    except WeightFileError:
        raise
    except (
        zipfile.BadZipFile,
        pickle.UnpicklingError,
        EOFError,
        KeyError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        OverflowError,
        # zipfile's own refusals and its decompressors' errors: an encrypted member (RuntimeError),
        # an unknown compression method (NotImplementedError), a corrupt deflate/LZMA/bzip2 stream.
        RuntimeError,
        NotImplementedError,
        zlib.error,
        lzma.LZMAError,
        OSError,
    ) as e:
        raise WeightFileError(f"Cannot read PyTorch file {path} (truncated or not a state dict): {e}") from e
    # Training checkpoints wrap the weights: {'state_dict': ...} or {'model': ...}.
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise WeightFileError(f"{path} holds a {type(obj).__name__}, not a state dict.")
    check_tensor_count(len(obj), path, "entries in its state dict")
    tensors = {}
    for k, v in obj.items():
        if not isinstance(k, str):
            raise WeightFileError(f"{path}: state-dict key {_short(k)} is a {type(k).__name__}, expected a string")
        name = k[len("module.") :] if k.startswith("module.") else k  # DataParallel prefix
        if isinstance(v, np.ndarray):
            tensors[name] = v
    # A tensor the pickle names under many keys is read once, but every later step (finite-value
    # checks, name maps, the model's copy) handles it once per name: 100,000 names of one 4 MB tensor
    # took 18 s to check. Counted per name, as it will be used.
    named = sum(v.nbytes for v in tensors.values())
    limits.check(
        path, named, f"{len(tensors):,} named tensors (one shared by several names counted for each)", WeightFileError
    )
    return tensors


# --- Keras HDF5 -------------------------------------------------------------------------------


def read_keras_h5(path: Path) -> dict[str, np.ndarray]:
    """Reads a legacy-layout Keras ``.h5`` (weights-only or whole model) into ``layer/weight`` names.

    Every dataset is found and checked (``_h5_dataset``, ``_h5_declared``) before any is read.
    """
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightFileError(f"Cannot read HDF5 file {path} (truncated or not HDF5): {e}") from e
    with f:
        try:
            if _h5_link(f, "layers") and _h5_link(f, "vars") and "layer_names" not in f.attrs:
                raise WeightFileError(
                    f"{path} is a Keras 3 '.weights.h5' file, whose layers are named by creation order, not by "
                    "name. Save with model.save('model.h5') (whole model) or use the Keras applications weight files."
                )
            root = _h5_get(f, "model_weights", path) if _h5_link(f, "model_weights") else f
            if "layer_names" not in root.attrs:
                raise WeightFileError(f"{path} is HDF5 but not a Keras weight file (no 'layer_names' attribute).")
            found = {}
            layers = _h5_names(root, "layer_names", path, 0)
            named = len(layers)
            for layer in layers:
                group = _h5_get(root, layer, path)
                weights = _h5_names(group, "weight_names", path, named) if "weight_names" in group.attrs else []
                named += len(weights)
                for weight in weights:
                    # TF-Keras 2 names end in ':0' and may be nested (model/layer/kernel:0).
                    leaf = weight.split("/")[-1].split(":")[0]
                    owner = weight.split("/")[-2] if "/" in weight else layer
                    found[f"{owner}/{leaf}"] = _h5_dataset(group, weight, path)
            if found:
                largest = max(found.values(), key=lambda d: math.prod(d.shape) * d.dtype.itemsize)
                what = f"{len(found)} HDF5 dataset(s), the largest {largest.name!r} of {largest.dtype}{largest.shape},"
                limits.check(path, _h5_declared(found.values()), what, WeightFileError)
            return {name: np.asarray(dataset[()]) for name, dataset in found.items()}
        except WeightFileError:
            raise
        # h5py raises ValueError and TypeError too on damaged metadata (a datatype or string encoding it cannot map).
        except (KeyError, OSError, RuntimeError, ValueError, TypeError) as e:
            raise WeightFileError(f"Cannot read Keras weights from {path} (truncated or damaged): {e}") from e


# Filters a Keras file may use, whose output HDF5 bounds or ``_h5_declared`` counts: deflate, shuffle,
# fletcher32, LZF. Any other (szip, n-bit, scale-offset, a plugin found on the HDF5 plugin path) is refused.
_H5_DEFLATE, _H5_LZF = 1, 32000
_H5_FILTERS = {_H5_DEFLATE: "gzip", 2: "shuffle", 3: "fletcher32", _H5_LZF: "lzf"}
# Deflate inflates at most about 1032 times; HDF5 doubles its output buffer as it goes.
_DEFLATE_MAX_GROWTH = 2 * 1032
# LZF's longest back-reference, 3 bytes, copies 264: at most 88 times, in a buffer h5py's filter grows by the
# chunk's stored size until the chunk fits, whatever size the dataset declares.
_LZF_MAX_GROWTH = 88 + 1
_H5_GROWTH = {_H5_DEFLATE: _DEFLATE_MAX_GROWTH, _H5_LZF: _LZF_MAX_GROWTH}


def _h5_where(obj, path: Path) -> str:
    return f"{path}: HDF5 object {obj.name!r}" if getattr(obj, "name", None) else f"{path}:"


# Layer and weight names are read as fixed-length strings of this many bytes: variable-length
# strings in HDF5 may all point at one large heap object, so their decoded size is unknown.
_H5_NAME_BYTES = 1024


# Layer and weight names a Keras file may list, all attributes together (EfficientNet-B7's: about 2,000).
# Each name costs HDF5 lookups (~0.1 ms), and names may repeat: a 3 KB file listing one layer 3,000 times,
# whose weight_names lists one dataset 3,000 times, made 9 million lookups (about 15 minutes).
MAX_KERAS_NAMES = 1 << 14


def _h5_names(group, attr: str, path: Path, read_before: int) -> list[str]:
    """The strings of attribute ``attr`` (a list of names), each cut at ``_H5_NAME_BYTES``.

    Refused when they bring the names read (``read_before`` already) past ``MAX_KERAS_NAMES``.
    """
    import h5py

    attr_id = group.attrs.get_id(attr)
    if attr_id.shape is not None and math.prod(attr_id.shape) == 0:
        return []  # a layer without weights: Keras writes an empty float array
    if h5py.check_string_dtype(attr_id.dtype) is None or len(attr_id.shape) > 1:
        raise WeightFileError(
            f"{_h5_where(group, path)} attribute {attr!r} is {attr_id.dtype}{attr_id.shape}, expected a list of "
            "names as Keras writes them"
        )
    count = math.prod(attr_id.shape)
    if read_before + count > MAX_KERAS_NAMES:
        raise WeightFileError(
            f"{_h5_where(group, path)} attribute {attr!r} lists {count:,} names, {read_before + count:,} with "
            f"those read before: more than the {MAX_KERAS_NAMES:,} layer and weight names a Keras file holds"
        )
    limits.check(path, count * _H5_NAME_BYTES, f"attribute {attr!r} of {count:,} names", WeightFileError)
    names = np.zeros(attr_id.shape, f"S{_H5_NAME_BYTES}")
    attr_id.read(names, mtype=h5py.h5t.py_create(names.dtype))
    return [v.decode("utf-8", errors="replace") for v in np.atleast_1d(names)]


def _h5_link(group, name: str):
    """``(kind, target)`` of the link ``name`` in ``group`` without following it, or None when there is none.

    h5py's ``in`` and ``get`` follow links (opening another file for an external link);
    the low-level calls here read the link itself.
    """
    import h5py

    if not isinstance(group, h5py.Group):
        return None
    key = name.encode()
    if not group.id.links.exists(key):
        return None
    kind = group.id.links.get_info(key).type
    if kind == h5py.h5l.TYPE_HARD:
        return "hard", None
    if kind == h5py.h5l.TYPE_SOFT:
        return "soft", group.id.links.get_val(key).decode(errors="replace")
    if kind == h5py.h5l.TYPE_EXTERNAL:
        filename, target = group.id.links.get_val(key)
        return "external", f"{filename.decode(errors='replace')}:{target.decode(errors='replace')}"
    return "user-defined", None


def _h5_get(group, name: str, path: Path):
    """``group[name]`` reached through hard links, or soft links straight to hard-linked objects in the file.

    External links (another file), user-defined links, and soft links to links (which may
    loop or leave the file) are refused naming the link.
    """
    obj = group.file if name.startswith("/") else group
    for part in [p for p in name.split("/") if p]:
        where = f"{path}: HDF5 link {(obj.name.rstrip('/') + '/' + part)!r}"
        link = _h5_link(obj, part)
        if link is None:
            # Names come from the file's attributes (up to _H5_NAME_BYTES each): shortened in the message.
            raise KeyError(f"{_short(obj.name.rstrip('/') + '/' + part)} does not exist")
        kind, target = link
        if kind == "soft":
            obj = _h5_hard(obj, target, where)
        elif kind == "hard":
            obj = obj[part]
        else:
            raise WeightFileError(f"{where} is an {kind} link to {target!r}; a weight file must hold its own data")
    return obj


def _h5_hard(group, target: str, where: str):
    """The object at soft-link ``target`` (from ``group``, or the root when absolute) through hard links only."""
    obj = group.file if target.startswith("/") else group
    for part in [p for p in target.split("/") if p]:
        link = _h5_link(obj, part)
        if link is None:
            raise WeightFileError(f"{where} is a soft link to {target!r}, which does not exist in the file")
        if link[0] != "hard":
            raise WeightFileError(f"{where} is a soft link to {target!r}, another link; refused (links may loop)")
        obj = obj[part]
    return obj


def _h5_dataset(group, name: str, path: Path):
    """Dataset ``group[name]`` once it is known to hold plain numbers stored in this file."""
    import h5py

    dataset = _h5_get(group, name, path)
    where = _h5_where(dataset, path)
    if not isinstance(dataset, h5py.Dataset):
        raise WeightFileError(f"{where} is a {type(dataset).__name__}, expected a dataset")
    if dataset.shape is None:  # HDF5's null dataspace: no shape, no data (h5py.Empty)
        raise WeightFileError(f"{where} is an empty (null-dataspace) dataset; expected an array of numbers")
    plist = dataset.id.get_create_plist()
    if dataset.is_virtual:
        raise WeightFileError(f"{where} is a virtual dataset (it maps other files' data); refused")
    if plist.get_external_count() > 0:
        raise WeightFileError(f"{where} keeps its data in external files; a weight file must hold its own data")
    dtype = dataset.dtype
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise WeightFileError(
            f"{where} has type {dtype} (a reference, variable-length or compound type?); expected plain numbers"
        )
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in _H5_FILTERS:
            raise WeightFileError(f"{where} uses HDF5 filter {code}; only {sorted(_H5_FILTERS.values())} are read")
    return dataset


def _h5_declared(datasets) -> int:
    """The bytes reading ``datasets`` takes: each one's declared shape (a fill value included) plus the
    largest buffer a compressed chunk may inflate into on the way."""
    total, transient = 0, 0
    for dataset in datasets:
        total += math.prod(dataset.shape) * dataset.dtype.itemsize
        if dataset.chunks is None:
            continue
        chunk = math.prod(dataset.chunks) * dataset.dtype.itemsize
        plist = dataset.id.get_create_plist()
        # Each decoding filter of the pipeline may grow what the one before it gave.
        growth = math.prod(_H5_GROWTH.get(plist.get_filter(i)[0], 1) for i in range(plist.get_nfilters()))
        if growth > 1:  # a chunk may decode far past the size the dataset declares for it
            stored = []
            dataset.id.chunk_iter(lambda info: stored.append(info.size))
            chunk = max([chunk] + [growth * n for n in stored])
        transient = max(transient, chunk)
    return total + transient
