"""Name maps from each weight source's naming and layout to effnet_jax variable paths.

Every map returns ``{(collection, *module_path, leaf): array}`` in flax layout
(HWIO convolution kernels, ``(in, out)`` dense kernels), plus notes for the
summary. Keys a map does not recognise are kept under ``("unknown", key)`` so the
loader can name the first one in its error.
"""

from __future__ import annotations

import re

import numpy as np

from effnet_jax.models.variants import IMAGENET_STD, VariantConfig

Key = tuple[str, ...]

_BN_LEAVES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


def _torch_leaf(module: list[str], leaf: str, value: np.ndarray) -> tuple[Key, np.ndarray] | None:
    """Maps one PyTorch tensor of a module path to a flax key and layout."""
    is_norm = module[-1].startswith("bn")
    if is_norm:
        if leaf == "num_batches_tracked":
            return None
        if leaf not in _BN_LEAVES:
            return ("unknown", "/".join(module + [leaf])), value
        collection, name = _BN_LEAVES[leaf]
        return (collection, *module, name), value
    if leaf == "weight" and value.ndim == 4:  # (out, in/groups, kh, kw) -> (kh, kw, in/groups, out)
        return ("params", *module, "kernel"), value.transpose(2, 3, 1, 0)
    if leaf == "weight" and value.ndim == 2:  # Linear (out, in) -> Dense (in, out)
        return ("params", *module, "kernel"), value.T
    if leaf == "bias":
        return ("params", *module, "bias"), value
    return ("unknown", "/".join(module + [leaf])), value


def from_timm(tensors: dict[str, np.ndarray], variant: VariantConfig) -> dict[Key, np.ndarray]:
    """timm naming: ``blocks.3.1.conv_dw.weight`` -> ``params/blocks_3_1/conv_dw/kernel``."""
    out = {}
    for name, value in tensors.items():
        parts = name.split(".")
        if len(parts) < 2:  # no module path ("weight"): nothing of ours; the loader names it
            out[("unknown", name)] = value
            continue
        if parts[0] == "blocks" and len(parts) > 3:
            parts = [f"blocks_{parts[1]}_{parts[2]}"] + parts[3:]
        mapped = _torch_leaf(parts[:-1], parts[-1], value)
        if mapped is not None:
            out[mapped[0]] = mapped[1]
    return out


# efficientnet_pytorch names per block type: its module name -> timm's.
_EFFNET_PT_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_EFFNET_PT_DS = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_EFFNET_PT_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_EFFNET_PT_BLOCK = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def efficientnet_pytorch_to_timm(tensors: dict[str, np.ndarray], variant: VariantConfig) -> dict[str, np.ndarray]:
    """Renames ``_blocks.N._expand_conv.weight`` (flat block numbering) to timm's stage/index names."""
    flat_blocks = [b for stage in variant.block_defs() for b in stage]
    renamed = {}
    for name, value in tensors.items():
        match = _EFFNET_PT_BLOCK.match(name)
        if match:
            n, module, leaf = int(match[1]), match[2], match[3]
            if n >= len(flat_blocks):
                renamed[name] = value  # left unknown: more blocks than the variant has
                continue
            b = flat_blocks[n]
            table = _EFFNET_PT_IR if b.block_type == "ir" else _EFFNET_PT_DS
            renamed[f"blocks.{b.stage}.{b.index}.{table.get(module, module)}.{leaf}"] = value
        else:
            module, _, leaf = name.rpartition(".")
            renamed[f"{_EFFNET_PT_TOP.get(module, module)}.{leaf}"] = value
    return renamed


def is_efficientnet_pytorch(tensors: dict[str, np.ndarray]) -> bool:
    return any(k.startswith(("_conv_stem.", "_blocks.")) for k in tensors)


def from_pytorch(tensors: dict[str, np.ndarray], variant: VariantConfig) -> dict[Key, np.ndarray]:
    """Either PyTorch naming (timm or efficientnet_pytorch), detected from the keys."""
    if is_efficientnet_pytorch(tensors):
        tensors = efficientnet_pytorch_to_timm(tensors, variant)
    return from_timm(tensors, variant)


# Keras applications: block{stage+1}{letter}_{layer}; the first stage has no expansion.
_KERAS_IR = {
    "expand_conv": "conv_pw",
    "expand_bn": "bn1",
    "dwconv": "conv_dw",
    "bn": "bn2",
    "se_reduce": "se/conv_reduce",
    "se_expand": "se/conv_expand",
    "project_conv": "conv_pwl",
    "project_bn": "bn3",
}
_KERAS_DS = {
    "dwconv": "conv_dw",
    "bn": "bn1",
    "se_reduce": "se/conv_reduce",
    "se_expand": "se/conv_expand",
    "project_conv": "conv_pw",
    "project_bn": "bn2",
}
_KERAS_TOP = {
    "stem_conv": "conv_stem",
    "stem_bn": "bn1",
    "top_conv": "conv_head",
    "top_bn": "bn2",
    "predictions": "classifier",
}
_KERAS_BN = {
    "gamma": ("params", "scale"),
    "beta": ("params", "bias"),
    "moving_mean": ("batch_stats", "mean"),
    "moving_variance": ("batch_stats", "var"),
}
_KERAS_BLOCK = re.compile(r"^block(\d+)([a-z])_(\w+)$")
# Layers without a counterpart: the input normalisation is returned separately.
_KERAS_IGNORED = ("normalization",)


def _keras_module(layer: str, variant: VariantConfig) -> str | None:
    if layer in _KERAS_TOP:
        return _KERAS_TOP[layer]
    match = _KERAS_BLOCK.match(layer)
    if not match:
        return None
    stage, index, module = int(match[1]) - 1, ord(match[2]) - ord("a"), match[3]
    stages = variant.block_defs()
    if stage >= len(stages) or index >= len(stages[stage]):
        return None
    table = _KERAS_IR if stages[stage][index].block_type == "ir" else _KERAS_DS
    return f"blocks_{stage}_{index}/{table[module]}" if module in table else None


def from_keras(tensors: dict[str, np.ndarray], variant: VariantConfig) -> dict[Key, np.ndarray]:
    """Keras applications naming: ``block2a_dwconv/depthwise_kernel`` -> ``blocks_1_0/conv_dw/kernel``."""
    out = {}
    for name, value in tensors.items():
        layer, _, leaf = name.rpartition("/")  # a layer name may itself hold a "/"
        if layer in _KERAS_IGNORED:
            continue
        module = _keras_module(layer, variant)
        if module is None:
            out[("unknown", name)] = value
            continue
        path = tuple(module.split("/"))
        if leaf in _KERAS_BN:
            collection, flax_leaf = _KERAS_BN[leaf]
            out[(collection, *path, flax_leaf)] = value
        elif path[-1] == "conv_dw" and leaf in ("depthwise_kernel", "kernel") and value.ndim == 4:
            # (kh, kw, C, 1) -> (kh, kw, 1, C); another rank is left as it is, for the loader's shape check to name
            out[("params", *path, "kernel")] = value.transpose(0, 1, 3, 2)
        elif leaf in ("kernel", "bias"):
            out[("params", *path, leaf)] = value
        else:
            out[("unknown", name)] = value
    return out


def keras_input_normalisation(tensors: dict[str, np.ndarray]) -> tuple[tuple, tuple] | None:
    """The mean/std (on a 0-1 pixel scale) that a Keras EfficientNet applies inside the model.

    Keras rescales by 1/255, then normalises with its Normalization layer's mean and
    variance; when built with ImageNet weights it further divides by sqrt(std) to
    match the original TF implementation. So the effective std is
    ``sqrt(variance) * sqrt(imagenet_std)`` for ImageNet statistics, else ``sqrt(variance)``.
    """
    if "normalization/mean" not in tensors:
        return None
    if "normalization/variance" not in tensors:
        raise ValueError("'normalization/mean' without 'normalization/variance'")
    mean = np.asarray(tensors["normalization/mean"], np.float64).reshape(-1)
    variance = np.asarray(tensors["normalization/variance"], np.float64).reshape(-1)
    # The run records these as its input normalisation: a NaN or a zero std would blank every image.
    if mean.size not in (1, 3) or variance.shape != mean.shape or not np.all(np.isfinite(mean)):
        raise ValueError(f"'normalization/mean' {mean.tolist()[:4]}: expected 1 or 3 finite values, one variance each")
    if not np.all(np.isfinite(variance) & (variance > 0)):
        raise ValueError(f"'normalization/variance' {variance.tolist()[:4]}: expected positive finite values")
    std = np.sqrt(variance)
    if np.allclose(std, IMAGENET_STD, atol=1e-3):
        std = std * np.sqrt(np.asarray(IMAGENET_STD))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
