"""Run an exported model with jax alone: ``model = load(DIR)``, then ``model(images)`` -> P(PNEUMONIA) per image.

The work is split where the exported function's fixed input shape puts it:

- on the host (numpy + Pillow, the same functions as effnet-predict and the eval pipeline):
  decode (images, DICOM), grayscale, the stored copy (shorter side <= ``max_size``, JPEG),
  then the centre crop and bilinear resize to ``image_size`` x ``image_size`` uint8;
- inside the exported function: grey -> 3 channels, the weights' mean/std normalisation,
  the network, the calibration temperature if any, and the softmax.

No Flax, optax, orbax or model code is imported here (a test checks it).
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import zipfile
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from jax import export as jax_export
from PIL import Image

from effnet_jax import limits, zip_directory
from effnet_jax.data import imaging, transforms
from effnet_jax.labels import class_record
from effnet_jax.serving import bundle
from effnet_jax.serving.bundle import ExportedModelError

MAX_IMAGE_FILE_BYTES = limits.MAX_IMAGE_FILE_BYTES  # as effnet-data refuses larger files


class ImageInputError(ValueError):
    """An image (array or file) the model cannot take; the message names it."""


class ImageBudgetError(ImageInputError):
    """An image over a size budget (file bytes, or decoded bytes: ``effnet_jax.limits``); the message names it."""


def read_image(path: str) -> bytes:
    """The bytes of image or DICOM file ``path``, refusing non-regular and oversized files."""
    try:
        return limits.read_regular_file(path, MAX_IMAGE_FILE_BYTES)
    except limits.BudgetError as e:
        raise ImageBudgetError(str(e)) from None
    except OSError as e:
        raise ImageInputError(f"{path}: cannot read file ({type(e).__name__}: {e.strerror or e})") from e


def _gray_from_array(image, name: str) -> Image.Image:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ImageInputError(f"{name}: dtype {arr.dtype}, expected uint8 grey levels")
    if arr.ndim == 2 and min(arr.shape) >= 1:
        return Image.fromarray(np.ascontiguousarray(arr), mode="L")
    if arr.ndim == 3 and arr.shape[2] == 3 and min(arr.shape[:2]) >= 1:
        return imaging.to_gray(Image.fromarray(np.ascontiguousarray(arr), mode="RGB"))
    raise ImageInputError(f"{name}: shape {arr.shape}, expected (H, W) grey or (H, W, 3) RGB")


class ExportedModel:
    """An exported model, ready to score images. ``threshold`` and ``class_names`` come from model.json."""

    def __init__(self, directory: str, meta: dict, exported, weights: list, gradcam=None, image_bytes: int = 0):
        self.directory = directory
        # The most images one call takes: XLA allocates what the module's types declare per image
        # (``image_bytes``, its largest tensor of one image), so a batch of them stays in the budget.
        self.max_batch = max(1, limits.budget() // image_bytes) if image_bytes else None
        self.info = meta  # the whole of model.json
        self.class_names = tuple(meta["class_names"])
        # Past two classes there is no threshold: the most probable class is the label.
        self.threshold = None if len(self.class_names) > 2 else float(meta["threshold"]["value"])
        # What calibrated the probabilities (1.0: none), reported with each record as effnet-predict does.
        self.temperature = float(meta.get("temperature") or 1.0)
        self.image_size = int(meta["input"]["image_size"])
        self.center_crop = float(meta["input"]["center_crop"])
        self.max_size = int(meta["input"]["max_size"])
        self.equalize = str(meta["input"].get("equalize", "none"))  # absent from older exports
        self._exported = exported
        self._weights = [jax.device_put(w) for w in weights]
        self._call = jax.jit(exported.call)
        # The guided Grad-CAM function (gradcam.stablehlo); None for a folder exported without one.
        self._gradcam = None if gradcam is None else jax.jit(gradcam.call)

    @property
    def has_gradcam(self) -> bool:
        """Whether the folder holds the Grad-CAM function (exports before it existed do not)."""
        return self._gradcam is not None

    # -- host preprocessing -----------------------------------------------------------------------
    def _from_stored(self, stored: bytes) -> np.ndarray:
        # Exactly effnet-predict's steps after storage: reduced decode, centre crop, bilinear resize.
        gray = transforms.decode_gray(stored, math.ceil(self.image_size / self.center_crop))
        return transforms.equalize(transforms.center_resize(gray, self.image_size, self.center_crop), self.equalize)

    def prepare_array(self, image, name: str = "image") -> np.ndarray:
        """A uint8 ``(H, W)`` or ``(H, W, 3)`` image -> the function's ``(S, S)`` uint8 input.

        The pixels go through the steps effnet-predict applies to a lossless file of them.
        """
        try:
            stored, _ = imaging.store_gray(_gray_from_array(image, name), self.max_size, name=name)
        except imaging.BadImageError as e:
            raise ImageInputError(str(e)) from e
        return self._from_stored(stored)

    def prepare_file(self, path: str) -> np.ndarray:
        """An image or DICOM file -> the function's ``(S, S)`` uint8 input, as effnet-predict reads it."""
        return self.prepare_bytes(read_image(path), path)

    def prepare_bytes(self, data: bytes, name: str) -> np.ndarray:
        """The bytes of an image or DICOM file called ``name`` -> the function's ``(S, S)`` uint8 input.

        ImageBudgetError when decoding would exceed the decoded-size budget, ImageInputError otherwise.
        """
        try:
            stored, _ = imaging.load_for_storage(data, name, self.max_size)
        except imaging.ImageBudgetError as e:
            raise ImageBudgetError(str(e)) from e
        except imaging.BadImageError as e:
            raise ImageInputError(str(e)) from e
        return self._from_stored(stored)

    # -- scoring ------------------------------------------------------------------------------------
    def _checked(self, inputs) -> np.ndarray:
        inputs = np.asarray(inputs)
        expected = (self.image_size, self.image_size)
        if inputs.dtype != np.uint8 or inputs.ndim != 3 or inputs.shape[1:] != expected:
            raise ImageInputError(
                f"inputs: {inputs.dtype}{inputs.shape}, expected uint8 (B, {expected[0]}, {expected[1]})"
            )
        return inputs

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """P(positive class) for prepared inputs ``(B, S, S)`` uint8, as float32 ``(B,)``; ``(B, C)`` past two classes."""
        inputs = self._checked(inputs)
        if inputs.shape[0] == 0:
            return np.zeros((0,) if len(self.class_names) == 2 else (0, len(self.class_names)), np.float32)
        probs = self._in_parts(self._call, inputs)
        is_probability = (probs >= 0) & (probs <= 1)  # False for NaN
        if not is_probability.all():
            # effnet-export's softmax never gives one; a hand-made function's NaN would reach every answer
            # (JSON has no NaN: effnet-serve's 500 with a traceback per request).
            raise ExportedModelError(
                f"{os.path.join(self.directory, bundle.FUNCTION_FILE)}: returned {probs.size - is_probability.sum()} "
                "value(s) that are no probability (NaN, infinite or outside [0, 1]); not a function effnet-export wrote"
            )
        return probs

    def gradcam(self, inputs: np.ndarray) -> np.ndarray:
        """Guided Grad-CAM maps in [0, 1] for prepared inputs ``(B, S, S)`` uint8, as float32 ``(B, S, S)``."""
        if self._gradcam is None:
            raise ExportedModelError(f"{self.directory}: exported without {bundle.GRADCAM_FILE}; export the run again")
        inputs = self._checked(inputs)
        if inputs.shape[0] == 0:
            return np.zeros((0, self.image_size, self.image_size), np.float32)
        return self._in_parts(self._gradcam, inputs)

    def _in_parts(self, function, inputs: np.ndarray) -> np.ndarray:
        """``function`` on ``inputs`` in calls of at most ``max_batch`` images, the outputs concatenated."""
        step = self.max_batch or len(inputs)
        parts = [
            np.asarray(function(self._weights, inputs[i : i + step]), np.float32) for i in range(0, len(inputs), step)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __call__(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """P(positive class) for a list of uint8 images of any size, ``(H, W)`` grey or ``(H, W, 3)``."""
        if isinstance(images, np.ndarray):
            raise TypeError("pass a list of images (each (H, W) or (H, W, 3) uint8), not one array")
        prepared = [self.prepare_array(image, f"images[{i}]") for i, image in enumerate(images)]
        out = [self.run(np.stack(prepared[i : i + batch_size])) for i in range(0, len(prepared), batch_size)]
        return np.concatenate(out) if out else self.run(np.zeros((0, self.image_size, self.image_size), np.uint8))

    def predict_files(
        self, paths: Sequence[str], threshold: float | None = None, batch_size: int = 8
    ) -> Iterator[dict]:
        """Yields effnet-predict's record per path: ``{'file', 'prob_pneumonia', 'label', 'threshold', 'temperature'}``
        (past two classes ``{'file', 'probs', 'label', 'temperature'}``) or ``{'file', 'error'}`` for a file it cannot read."""
        threshold = self.threshold if threshold is None or self.threshold is None else float(threshold)
        for start in range(0, len(paths), max(1, batch_size)):
            chunk = paths[start : start + max(1, batch_size)]
            loaded, errors = {}, {}
            for i, path in enumerate(chunk):
                try:
                    loaded[i] = self.prepare_file(path)
                except ImageInputError as e:
                    errors[i] = str(e)
            probs = self.run(np.stack(list(loaded.values()))) if loaded else []
            scored = {i: k for k, i in enumerate(loaded)}
            for i, path in enumerate(chunk):
                if i in errors:
                    yield {"file": path, "error": errors[i]}
                    continue
                if threshold is None:
                    record = class_record(probs[scored[i]], self.class_names)
                    yield {"file": path, **record, "temperature": self.temperature}
                    continue
                p = float(probs[scored[i]])
                yield {
                    "file": path,
                    "prob_pneumonia": p,
                    "label": self.class_names[int(p >= threshold)],
                    "threshold": threshold,
                    "temperature": self.temperature,
                }


# -- loading --------------------------------------------------------------------------------------
# What weights.npz may hold besides its arrays' bytes. Per member: its zip records (local and
# central headers with np.savez's zip64 extras, under 200 bytes) and its .npy header (128 bytes
# as numpy writes it); per archive: the end records and a zip comment. A file larger than the
# function's arrays plus this room is refused from its size before a byte of it is read.
NPZ_MEMBER_ROOM = 4096
NPZ_ARCHIVE_ROOM = 1 << 17
NPZ_CENTRAL_ENTRY_ROOM = 1024  # bytes of central directory per member (46 + name + extras)


def _array_bytes(aval) -> int:
    return math.prod(aval.shape) * np.dtype(aval.dtype).itemsize


def weights_file_limit(avals) -> int:
    """The largest weights.npz accepted for weight arguments ``avals``: their bytes plus the .npz's own records."""
    room = len(avals) * NPZ_MEMBER_ROOM + NPZ_ARCHIVE_ROOM
    return min(bundle.MAX_WEIGHTS_BYTES, sum(_array_bytes(a) for a in avals) + room)


def _npy_header(archive: zipfile.ZipFile, name: str, aval, path: str):
    """Opens member ``name`` and reads its .npy header, refused unless it declares ``aval``'s dtype and shape.

    Returns the open member (positioned at the array's bytes), its shape, Fortran order and dtype.
    """
    f = archive.open(name)
    try:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if tuple(shape) != tuple(aval.shape) or dtype != aval.dtype or dtype.hasobject:
            raise ExportedModelError(
                f"{path}: {name} is {dtype}{tuple(shape)}, the function expects {aval.dtype}{tuple(aval.shape)}"
            )
    except BaseException:
        f.close()
        raise
    return f, shape, fortran, dtype


def _unreadable(path: str, name: str, e: Exception) -> ExportedModelError:
    return ExportedModelError(f"{path}: unreadable array {name} ({type(e).__name__}: {e})")


# zipfile's own refusals, the decompressor's, numpy's header parser's, a file cut short.
_ZIP_ERRORS = (ValueError, zipfile.BadZipFile, OSError, EOFError, RuntimeError, struct.error, NotImplementedError)


def _check_weights_directory(f, path: str, arrays: int) -> None:
    """The zip's end record of weights.npz: ``arrays`` members in a directory of their size; rewinds ``f``."""
    try:
        directory = zip_directory.read(f, path)  # the record zipfile itself reads first (zip64 included)
    except zip_directory.ZipDirectoryError as e:
        raise ExportedModelError(f"{path}: not an .npz archive ({e.reason})") from None
    members = directory.entries
    if members != arrays:
        raise ExportedModelError(f"{path}: holds {members} arrays, the function takes {arrays}")
    # zipfile makes an object per central-directory entry: its size is held to the members counted.
    if directory.size > members * NPZ_CENTRAL_ENTRY_ROOM:
        raise ExportedModelError(
            f"{path}: a zip central directory of {directory.size:,} bytes for {members} arrays (at most "
            f"{members * NPZ_CENTRAL_ENTRY_ROOM:,}); not written by effnet-export"
        )
    f.seek(0)


def check_weights_headers(f, path: str, avals) -> None:
    """What weights.npz's headers declare, checked against the function's weight arguments before it is read.

    The zip's end record (how many members, how large its central directory), then each member:
    stored or deflated (as np.savez writes them), its uncompressed size that of its array plus an
    .npy header, and its .npy header (dtype and shape). Only the headers are read.
    """
    expected = [f"arr_{i}.npy" for i in range(len(avals))]
    try:
        _check_weights_directory(f, path, len(avals))
        archive = zipfile.ZipFile(f)
    except _ZIP_ERRORS as e:
        if isinstance(e, ExportedModelError):
            raise
        raise ExportedModelError(f"{path}: not an .npz archive ({type(e).__name__}: {e})") from e
    with archive:
        names = archive.namelist()
        if sorted(names) != sorted(expected):
            raise ExportedModelError(f"{path}: holds {len(names)} arrays, the function takes {len(avals)}")
        for name, aval in zip(expected, avals):
            info, size = archive.getinfo(name), _array_bytes(aval)
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
                raise ExportedModelError(
                    f"{path}: {name} is encrypted or compressed with method {info.compress_type} "
                    "(np.savez stores or deflates)"
                )
            if not size <= info.file_size <= size + NPZ_MEMBER_ROOM:
                raise ExportedModelError(
                    f"{path}: {name} declares {info.file_size:,} bytes, its array "
                    f"{aval.dtype}{tuple(aval.shape)} takes {size:,} plus an .npy header"
                )
            try:
                _npy_header(archive, name, aval, path)[0].close()
            except ExportedModelError:
                raise
            except _ZIP_ERRORS as e:
                raise _unreadable(path, name, e) from e


def _read_weights(directory: str, meta: dict, avals) -> list[np.ndarray]:
    """The arrays of weights.npz, declared sizes and headers checked against the function's arguments first.

    The arrays the function takes are held to the decoded-size budget, model.json's record of the
    file's size and then the file's own size to those arrays plus the .npz's records, and the
    zip's and .npy headers to the arguments (``check_weights_headers``), before the file is read;
    the read stops one byte past the recorded size.
    """
    path = os.path.join(directory, bundle.WEIGHTS_FILE)
    if not all(isinstance(n, int) for aval in avals for n in aval.shape):
        raise ExportedModelError(f"{path}: the function's weight arguments have symbolic shapes")
    declared = sum(_array_bytes(aval) for aval in avals)
    limits.check(path, declared, f"the {len(avals)} weight arrays the function takes", ExportedModelError)
    limit, recorded = weights_file_limit(avals), meta["files"]["weights"]["bytes"]
    if recorded > limit:
        raise ExportedModelError(
            f"{path}: {os.path.join(directory, bundle.MODEL_JSON)} records {recorded:,} bytes, more than the "
            f"{limit:,} an .npz of the function's {len(avals)} weight arrays ({declared:,} bytes) takes"
        )
    data = bundle.read_checked(
        directory, meta, "weights", limit, inspect=lambda f, p: check_weights_headers(f, p, avals)
    )
    try:
        # The bytes read are checked again: the file may have changed since its headers were.
        source = io.BytesIO(data)
        _check_weights_directory(source, path, len(avals))
        archive = zipfile.ZipFile(source)
        names = sorted(archive.namelist())
    except zipfile.BadZipFile as e:
        raise ExportedModelError(f"{path}: not an .npz archive ({e})") from e
    expected = [f"arr_{i}.npy" for i in range(len(avals))]
    if sorted(names) != sorted(expected):
        raise ExportedModelError(f"{path}: holds {len(names)} arrays, the function takes {len(avals)}")
    arrays = []
    for name, aval in zip(expected, avals):
        try:
            f, shape, fortran, dtype = _npy_header(archive, name, aval, path)
            with f:
                raw = f.read(dtype.itemsize * math.prod(shape) + 1)
        except ExportedModelError:
            raise
        except _ZIP_ERRORS as e:
            raise _unreadable(path, name, e) from e
        if len(raw) != dtype.itemsize * math.prod(shape):
            raise ExportedModelError(f"{path}: {name} holds {len(raw)} bytes, not {dtype.itemsize * math.prod(shape)}")
        array = np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C")
        arrays.append(array)
    return arrays


def _read_function(directory: str, meta: dict, role: str):
    """The ``jax.export`` function model.json lists under ``files[role]``, checked and deserialized."""
    path = os.path.join(directory, meta["files"][role]["name"])
    blob = bundle.read_checked(directory, meta, role, bundle.MAX_FUNCTION_BYTES)
    try:
        exported = jax_export.deserialize(bytearray(blob))
    except Exception as e:  # the flatbuffer reader raises struct, index and value errors on bad bytes
        raise ExportedModelError(f"{path}: not a serialized jax.export function ({type(e).__name__})") from e
    image_bytes = check_custom_calls(exported, path)
    return exported, image_bytes


def load(directory: str) -> ExportedModel:
    """The model ``effnet-export`` wrote to ``directory``; raises ExportedModelError naming the bad file."""
    directory = os.fspath(directory)
    meta = bundle.read_model_json(directory)
    function_path = os.path.join(directory, bundle.FUNCTION_FILE)
    exported, image_bytes = _read_function(directory, meta, "function")
    size = int(meta["input"]["image_size"])
    if not exported.in_avals:
        raise ExportedModelError(f"{function_path}: takes no arguments; model.json says weights and uint8 images")
    *weight_avals, image_aval = exported.in_avals
    # Two classes: P(the second) per image; more: one probability per class.
    classes = len(meta["class_names"])
    out_shape, said = ((), "(batch,)") if classes == 2 else ((classes,), f"(batch, {classes})")
    if (
        image_aval.dtype != np.uint8
        or len(image_aval.shape) != 3
        or tuple(image_aval.shape[1:]) != (size, size)
        or len(exported.out_avals) != 1
        or len(exported.out_avals[0].shape) != 1 + len(out_shape)
        or tuple(exported.out_avals[0].shape[1:]) != out_shape
    ):
        raise ExportedModelError(
            f"{function_path}: takes {exported.in_avals[-1]} and returns {exported.out_avals}; model.json "
            f"says uint8 (batch, {size}, {size}) -> {said}"
        )
    if isinstance(image_aval.shape[0], int):
        # effnet-export's batch is symbolic; a fixed one fails every other batch size (effnet-serve's start-up).
        raise ExportedModelError(
            f"{function_path}: takes a fixed batch of {image_aval.shape[0]} images; effnet-export exports any batch"
        )
    platform = jax.default_backend()
    if platform not in exported.platforms:
        raise ExportedModelError(f"{function_path}: exported for {list(exported.platforms)}, this host runs {platform}")
    weights_path = os.path.join(directory, bundle.WEIGHTS_FILE)
    weights = _read_weights(directory, meta, weight_avals)
    check_finite_weights(weights, weights_path)
    gradcam = None
    if "gradcam" in meta["files"]:
        gradcam, gradcam_bytes = _read_function(directory, meta, "gradcam")
        image_bytes = max(image_bytes, gradcam_bytes)
        gradcam_path = os.path.join(directory, bundle.GRADCAM_FILE)
        same_args = [str(a) for a in gradcam.in_avals] == [str(a) for a in exported.in_avals]
        if not same_args or [tuple(a.shape[1:]) for a in gradcam.out_avals] != [(size, size)]:
            raise ExportedModelError(
                f"{gradcam_path}: takes {gradcam.in_avals[-1]} and returns {gradcam.out_avals}; expected the "
                f"function's arguments and a (batch, {size}, {size}) map"
            )
    bundle.check_model_json(directory)
    return ExportedModel(directory, meta, exported, weights, gradcam, image_bytes)


# What effnet-export's functions hold besides plain StableHLO ops: jax.export's own shape
# checks for the symbolic batch, and the sharding markers jax may add. Anything else (a
# custom_call to a target this host may not have, or one that runs foreign code) is refused.
ALLOWED_CUSTOM_CALLS = frozenset({"shape_assertion", "Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"})
_CUSTOM_CALL = re.compile(r"stablehlo\.custom_call\s*@([\w.$-]+)|call_target_name\s*=\s*\"([^\"]*)\"")


def check_custom_calls(exported, path: str) -> int:
    """Refuses a function that calls a custom_call target effnet-export never emits, loops, waits on a
    transfer or declares a tensor past the budget (``check_module_ops``); one line naming ``path``.

    Returns the bytes of its largest tensor for one image (``check_module_ops``)."""
    try:
        text = exported.mlir_module()
    except Exception as e:  # a module the MLIR parser cannot print is not one effnet-export wrote
        raise ExportedModelError(f"{path}: its StableHLO module cannot be read ({type(e).__name__})") from e
    image_bytes = check_module_ops(text, path)
    targets = {a or b for a, b in _CUSTOM_CALL.findall(text)}
    calls = text.count("stablehlo.custom_call")
    found = len(_CUSTOM_CALL.findall(text))
    unknown = sorted(targets - ALLOWED_CUSTOM_CALLS)
    if unknown or found < calls:
        shown = ", ".join(unknown[:3]) or "a target that cannot be read"
        raise ExportedModelError(
            f"{path}: calls custom_call {shown}, which effnet-export never emits; refusing to run a hand-made module"
        )
    return image_bytes


def check_finite_weights(weights: list[np.ndarray], path: str) -> None:
    """Refuses weights holding NaN or inf: such a model gives the same label to every image."""
    for i, w in enumerate(weights):
        if np.issubdtype(w.dtype, np.inexact) and not np.isfinite(w).all():
            bad = int(w.size - np.isfinite(w).sum())
            raise ExportedModelError(f"{path}: arr_{i}.npy holds {bad} non-finite value(s) (NaN or inf)")


# Ops effnet-export's functions never hold, and that can hold a process forever: a loop (a hand-made
# module's may never end) and the transfers that wait for a host or device peer.
REFUSED_OPS = ("while", "infeed", "outfeed", "send", "recv")
_REFUSED_OP = re.compile(r"\b(?:stablehlo|mhlo)\.(" + "|".join(REFUSED_OPS) + r")\b")
# A ranked tensor type: its dimensions (``?`` for the symbolic batch), ``complex<`` when complex, and
# its element type's kind and bits (f8E4M3FN: f, 8; index has no bits: 64). What follows (the
# element type's suffix, an encoding) does not change its size.
_TENSOR_TYPE = re.compile(r"tensor<((?:[0-9?]+x)+)(complex<)?([a-z]+)([0-9]*)")
# An op with results, as the module prints it (``%3 = stablehlo.add``, ``%4:2 = "stablehlo.sort"``). XLA's
# compile time grows with them: EfficientNet-B7's Grad-CAM function for cpu, cuda and tpu has about 24,500
# (9 s to compile on two CPU cores); a hand-made 2 MB one of 160,000 took 28 s and 1.5 GB.
_OP = re.compile(r"=\s*\"?[a-z_]+\.[a-z_.]+")
MAX_FUNCTION_OPS = 1 << 16


def check_module_ops(text: str, path: str) -> int:
    """Refuses a module holding a ``REFUSED_OPS`` op, or a tensor of one image past the decoded-size budget.

    XLA allocates what a module's types declare: ``tensor<?x65536x65536xf32>`` in a function of
    a few KB would take 16 GiB per image. The symbolic batch counts as one image; the bytes of
    the largest tensor for one image are returned, and ``ExportedModel`` calls the function on
    as many images at once as fit the budget at that size.
    """
    found = _REFUSED_OP.search(text)
    if found:
        raise ExportedModelError(
            f"{path}: holds a {found.group(0)} op, which effnet-export never emits (it may never end); "
            "refusing to run a hand-made module"
        )
    ops = len(_OP.findall(text))
    if ops > MAX_FUNCTION_OPS:
        raise ExportedModelError(
            f"{path}: holds {ops:,} ops, more than the {MAX_FUNCTION_OPS:,} of an exported EfficientNet "
            "(compiling them would take minutes); refusing to run a hand-made module"
        )
    largest, shown = 0, ""
    for dims, complex_, kind, bits in set(_TENSOR_TYPE.findall(text)):
        count = math.prod(1 if d == "?" else int(d) for d in dims.rstrip("x").split("x"))
        size = count * max(1, int(bits or 64) // 8) * (2 if complex_ else 1)
        if size > largest:
            largest, shown = size, f"tensor<{dims}{complex_}{kind}{bits}{'>' if complex_ else ''}>"
    limits.check(path, largest, f"its largest tensor type {shown} (for one image)", ExportedModelError)
    return largest
