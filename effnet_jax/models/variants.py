"""The EfficientNet family as data: block strings, scaling table, weight-source settings.

Names follow timm so that a weight name (``timm/tf_efficientnet_b3.in1k``) maps
straight to a variant. ``efficientnet_*`` are PyTorch-trained (symmetric padding,
BN eps 1e-5); ``tf_*`` are ported from TensorFlow (``SAME`` padding, BN eps 1e-3).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

# Stages of EfficientNet-B0 (Tan & Le, 2019, table 1).
# type_repeats_kernel_stride_expansion_channels_squeeze-excite-ratio
EFFICIENTNET_BLOCKS = (
    "ds_r1_k3_s1_e1_c16_se0.25",
    "ir_r2_k3_s2_e6_c24_se0.25",
    "ir_r2_k5_s2_e6_c40_se0.25",
    "ir_r3_k3_s2_e6_c80_se0.25",
    "ir_r3_k5_s1_e6_c112_se0.25",
    "ir_r4_k5_s2_e6_c192_se0.25",
    "ir_r1_k3_s1_e6_c320_se0.25",
)
# Lite drops squeeze-excite (unfriendly to mobile accelerators) and uses ReLU6.
LITE_BLOCKS = tuple(s.replace("_se0.25", "") for s in EFFICIENTNET_BLOCKS)

# name: (width multiplier, depth multiplier, resolution, dropout)
EFFICIENTNET_SCALING = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}
LITE_SCALING = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3),
    "lite4": (1.4, 1.8, 300, 0.3),
}


@dataclasses.dataclass(frozen=True)
class BlockDef:
    """One block of the network, after width and depth scaling."""

    block_type: str  # "ds" (depthwise separable) or "ir" (inverted residual)
    kernel_size: int
    stride: int
    expand_ratio: float
    in_channels: int
    out_channels: int
    se_ratio: float  # of the block's input channels; 0 means no squeeze-excite
    stage: int
    index: int  # position within its stage

    @property
    def mid_channels(self) -> int:
        return make_divisible(self.in_channels * self.expand_ratio)

    @property
    def se_channels(self) -> int:
        # timm and Keras both size the bottleneck from the block's input channels.
        return max(1, round(self.in_channels * self.se_ratio))

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


@dataclasses.dataclass(frozen=True)
class VariantConfig:
    """Everything needed to build one variant and feed it its expected input."""

    name: str
    width: float
    depth: float
    resolution: int
    dropout: float
    blocks: tuple[str, ...]
    activation: str  # "swish" or "relu6"
    padding: str  # "same" (TensorFlow) or "symmetric" (PyTorch)
    bn_eps: float
    bn_momentum: float  # flax convention: running = momentum * running + (1 - momentum) * batch
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fix_stem_head: bool = False  # Lite keeps 32 stem and 1280 head channels at every scale
    stem_channels: int = 32
    head_channels: int = 1280

    def scaled_stem(self) -> int:
        return self.stem_channels if self.fix_stem_head else make_divisible(self.stem_channels * self.width)

    def scaled_head(self) -> int:
        return self.head_channels if self.fix_stem_head else make_divisible(self.head_channels * self.width)

    def block_defs(self) -> list[list[BlockDef]]:
        """Decodes the block strings and applies width and depth scaling."""
        stages = []
        in_ch = self.scaled_stem()
        last = len(self.blocks) - 1
        for stage, spec in enumerate(self.blocks):
            args = parse_block_string(spec)
            out_ch = make_divisible(args["c"] * self.width)
            repeats = args["r"]
            if not (self.fix_stem_head and stage in (0, last)):
                repeats = int(math.ceil(repeats * self.depth))
            blocks = []
            for i in range(repeats):
                blocks.append(
                    BlockDef(
                        block_type=args["type"],
                        kernel_size=args["k"],
                        stride=args["s"] if i == 0 else 1,
                        expand_ratio=args["e"],
                        in_channels=in_ch,
                        out_channels=out_ch,
                        se_ratio=args.get("se", 0.0),
                        stage=stage,
                        index=i,
                    )
                )
                in_ch = out_ch
            stages.append(blocks)
        return stages


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Rounds a channel count to a multiple of ``divisor``, never losing over 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


_BLOCK_RE = re.compile(r"^(?P<key>[a-z]+)(?P<value>[0-9.]+)$")


def parse_block_string(spec: str) -> dict:
    """Parses ``ir_r2_k3_s2_e6_c24_se0.25`` into its fields."""
    block_type, *fields = spec.split("_")
    if block_type not in ("ds", "ir"):
        raise ValueError(f"Block string {spec!r}: unknown block type {block_type!r} (expected 'ds' or 'ir').")
    args: dict = {"type": block_type}
    for field in fields:
        match = _BLOCK_RE.match(field)
        if not match:
            raise ValueError(f"Block string {spec!r}: cannot parse field {field!r}.")
        key, value = match["key"], match["value"]
        args[key] = float(value) if key in ("e", "se") else int(value)
    missing = {"r", "k", "s", "e", "c"} - set(args)
    if missing:
        raise ValueError(f"Block string {spec!r}: missing fields {sorted(missing)}.")
    return args


# Two ports of every weight set: timm's own ("efficientnet_*", PyTorch padding and BatchNorm
# defaults) and the TensorFlow originals ("tf_*", TF "same" padding and Keras BatchNorm).
_TIMM_PORT = dict(padding="symmetric", bn_eps=1e-5, bn_momentum=0.9)
_TF_PORT = dict(padding="same", bn_eps=1e-3, bn_momentum=0.99)


def _build_registry() -> dict[str, VariantConfig]:
    families = (
        # scaling table, blocks, activation, extra fields, normalisation of the tf_ port
        (EFFICIENTNET_SCALING, EFFICIENTNET_BLOCKS, "swish", {}, (IMAGENET_MEAN, IMAGENET_STD)),
        # The Lite TF checkpoints were trained on inputs scaled to [-1, 1].
        (LITE_SCALING, LITE_BLOCKS, "relu6", {"fix_stem_head": True}, (INCEPTION_MEAN, INCEPTION_STD)),
    )
    registry = {}
    for scaling, blocks, activation, extra, (tf_mean, tf_std) in families:
        for key, (w, d, r, p) in scaling.items():
            common = dict(width=w, depth=d, resolution=r, dropout=p, blocks=blocks, activation=activation, **extra)
            for name, port, mean, std in (
                (f"efficientnet_{key}", _TIMM_PORT, IMAGENET_MEAN, IMAGENET_STD),
                (f"tf_efficientnet_{key}", _TF_PORT, tf_mean, tf_std),
            ):
                registry[name] = VariantConfig(name=name, mean=mean, std=std, **port, **common)
    return registry


VARIANTS: dict[str, VariantConfig] = _build_registry()

# For tests of the machinery around the model (multi-host runs, soups, sweeps), where compiling
# a full network would be most of the cost: Lite's seven stages with one block each at a quarter
# of the width. No weights exist for it, so list_variants() leaves it out.
TEST_VARIANT = VariantConfig(
    name="efficientnet_test",
    width=0.25,
    depth=0.1,  # every stage's repeats round up to one block
    resolution=64,
    dropout=0.0,
    blocks=LITE_BLOCKS,
    activation="relu6",
    padding="symmetric",
    bn_eps=1e-5,
    bn_momentum=0.9,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)


def get_variant(name: str) -> VariantConfig:
    """Looks a variant up by its timm name; a hub tag (``.ra_in1k``) is ignored."""
    base = name.split("/")[-1].split(".")[0]
    if base == TEST_VARIANT.name:
        return TEST_VARIANT
    if base not in VARIANTS:
        raise ValueError(f"Unknown EfficientNet variant {name!r}. Known: {', '.join(sorted(VARIANTS))}.")
    return VARIANTS[base]


def list_variants(pattern: str | None = None) -> list[str]:
    """Variant names, sorted; ``pattern`` keeps those matching a shell-style filter (``'*lite*'``)."""
    names = sorted(VARIANTS)
    return names if pattern is None else fnmatch.filter(names, pattern)
