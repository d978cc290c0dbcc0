"""Readers that turn a weight file into a flat ``{name: numpy array}`` dict, in the file's own layout.

None of them needs PyTorch or TensorFlow: ``.pth``/``.bin`` files (zip and legacy
layouts) are unpickled only by restricted unpicklers that rebuild tensors and
nothing else (so a weight file cannot run code), and every tensor's offset, size
and stride is checked against its storage before a view is taken (so a file
cannot make us read outside it); safetensors and Keras HDF5 are read with their
own libraries.
"""

from __future__ import annotations

import collections
import math
import pickle
import zipfile
from pathlib import Path

import numpy as np

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
    supported = "; ".join(f"{k}: {v}" for k, v in SUPPORTED_FORMATS.items())
    raise WeightFileError(f"Unknown weight format for {path} (suffix {path.suffix!r}). Supported: {supported}.")


def read_weights(path: str | Path) -> tuple[dict[str, np.ndarray], str]:
    """Reads any supported weight file; returns ``(tensors, format)``."""
    path = Path(path)
    if not path.exists():
        raise WeightFileError(f"Weight file {path} does not exist.")
    fmt = detect_format(path)
    reader = {"safetensors": read_safetensors, "pytorch": read_pytorch, "keras_h5": read_keras_h5}[fmt]
    return reader(path), fmt


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except Exception as e:  # safetensors raises its own error types for truncated headers and bodies
        raise WeightFileError(f"Cannot read safetensors file {path}: {e}") from e


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


class _PendingTensor:
    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialise(self) -> np.ndarray:
        data = self.storage.array
        if data is None:
            raise WeightFileError("a tensor's storage has no data in the file")
        self._check_bounds(len(data))
        if not self.size:
            return np.array(data[self.offset])
        if 0 in self.size:
            return np.zeros(self.size, data.dtype)
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=tuple(s * itemsize for s in self.stride)
        )
        return np.ascontiguousarray(view)

    def _check_bounds(self, length: int):
        # as_strided trusts its arguments: an offset, size or stride the storage cannot
        # hold would read process memory (or crash). The file's word is checked here.
        what = f"tensor of size {self.size}, stride {self.stride}, offset {self.offset}"
        if len(self.size) != len(self.stride):
            raise WeightFileError(f"{what}: size and stride have different lengths")
        if self.offset < 0 or any(n < 0 for n in self.size) or any(s < 0 for s in self.stride):
            raise WeightFileError(f"{what}: negative offset, size or stride")
        if 0 in self.size:
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
            return self._ALLOWED[(module, name)]
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
            or numel < 0
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


def _header_field(f, path: Path, what: str, types: tuple):
    value = _PlainUnpickler(f, path).load()
    if not isinstance(value, types) or isinstance(value, bool):
        raise WeightFileError(
            f"{path}: legacy header field {what} is a {type(value).__name__}, "
            f"expected {' or '.join(t.__name__ for t in types)}"
        )
    return value


def _materialise(obj, path: Path, key=""):
    if isinstance(obj, _PendingTensor):
        try:
            return obj.materialise()
        except WeightFileError as e:
            raise WeightFileError(f"{path}: key {key!r}: {e}") from None
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v, path, k)) for k, v in obj.items())
    return obj


def _load_zip(path: Path):
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if not pickles:
            raise WeightFileError(f"{path}: no data.pkl inside; not a PyTorch checkpoint.")
        prefix = pickles[0][: -len("/data.pkl")]
        with archive.open(pickles[0]) as f:
            unpickler = _TensorUnpickler(f, path)
            obj = unpickler.load()
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
            storage.array = np.frombuffer(raw, dtype=storage.dtype, count=storage.numel)
    return obj


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _load_legacy(path: Path):
    # torch<1.6 layout: pickled magic, version, sys info, the object, the storage keys,
    # then each storage as an int64 element count followed by its raw bytes.
    # Every field goes through a restricted unpickler: plain pickle.load would run any
    # global the file names (os.system) before we could look at what it holds.
    with open(path, "rb") as f:
        try:
            magic = _PlainUnpickler(f, path).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as e:
            raise WeightFileError(f"{path} is neither a zip nor a legacy PyTorch file ({e}).") from e
        if not _is_int(magic) or magic != _LEGACY_MAGIC:
            raise WeightFileError(f"{path} is neither a zip nor a legacy PyTorch file (bad magic number).")
        _header_field(f, path, "protocol version", (int,))
        _header_field(f, path, "sys info", (dict,))
        unpickler = _TensorUnpickler(f, path)
        obj = unpickler.load()
        keys = _header_field(f, path, "storage keys", (list,))
        if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in keys):
            raise WeightFileError(f"{path}: legacy storage keys must be strings")
        for key in keys:
            storage = unpickler.storages[str(key)]
            count = int(np.frombuffer(f.read(8), "<i8")[0])
            if count != storage.numel:
                raise WeightFileError(
                    f"{path}: storage {key} holds {count} elements, its tensors declare {storage.numel}"
                )
            raw = f.read(count * storage.dtype.itemsize)
            if len(raw) != count * storage.dtype.itemsize:
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
    ) as e:
        raise WeightFileError(f"Cannot read PyTorch file {path} (truncated or not a state dict): {e}") from e
    # Training checkpoints wrap the weights: {'state_dict': ...} or {'model': ...}.
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise WeightFileError(f"{path} holds a {type(obj).__name__}, not a state dict.")
    tensors = {}
    for k, v in obj.items():
        if not isinstance(k, str):
            raise WeightFileError(f"{path}: state-dict key {k!r} is a {type(k).__name__}, expected a string")
        name = k[len("module.") :] if k.startswith("module.") else k  # DataParallel prefix
        if isinstance(v, np.ndarray):
            tensors[name] = v
    return tensors


# --- Keras HDF5 -------------------------------------------------------------------------------


def read_keras_h5(path: Path) -> dict[str, np.ndarray]:
    """Reads a legacy-layout Keras ``.h5`` (weights-only or whole model) into ``layer/weight`` names."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightFileError(f"Cannot read HDF5 file {path} (truncated or not HDF5): {e}") from e
    with f:
        if "layers" in f and "vars" in f and "layer_names" not in f.attrs:
            raise WeightFileError(
                f"{path} is a Keras 3 '.weights.h5' file, whose layers are named by creation order, not by "
                "name. Save with model.save('model.h5') (whole model) or use the Keras applications weight files."
            )
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise WeightFileError(f"{path} is HDF5 but not a Keras weight file (no 'layer_names' attribute).")
        tensors = {}
        try:
            for layer in root.attrs["layer_names"]:
                layer = layer.decode() if isinstance(layer, bytes) else str(layer)
                group = root[layer]
                for weight in group.attrs.get("weight_names", []):
                    weight = weight.decode() if isinstance(weight, bytes) else str(weight)
                    # TF-Keras 2 names end in ':0' and may be nested (model/layer/kernel:0).
                    leaf = weight.split("/")[-1].split(":")[0]
                    owner = weight.split("/")[-2] if "/" in weight else layer
                    tensors[f"{owner}/{leaf}"] = np.asarray(group[weight])
        except (KeyError, OSError) as e:
            raise WeightFileError(f"Cannot read Keras weights from {path} (truncated or damaged): {e}") from e
    return tensors
