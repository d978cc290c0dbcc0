"""Test-time augmentation: average the positive-class probability over views of each image.

Views are the full image, optionally five crops (four corners and the centre,
each resized back to the input size), and optionally the horizontal mirror of
every one of those. All views of a batch go through the model as one larger
batch, so TTA costs one compiled call per batch.

A spec string names the setting on the command line: ``none``, ``flip``,
``crops``, ``flip+crops`` or with a crop fraction ``flip+crops@0.8``.
"""

from __future__ import annotations

import dataclasses
import reprlib
from collections.abc import Callable

import jax
import jax.numpy as jnp

from effnet_jax.labels import class_probabilities


@dataclasses.dataclass(frozen=True)
class TTAConfig:
    """Which views to average. The unaugmented full image is always one of them."""

    flip: bool = False
    crops: bool = False
    crop_fraction: float = 0.875  # side of each crop as a fraction of the image side

    def __post_init__(self):
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"TTA crop_fraction must be in (0, 1], got {self.crop_fraction}.")

    @property
    def num_views(self) -> int:
        return (1 + 5 * self.crops) * (1 + self.flip)

    def spec(self) -> str:
        """The spec string that parses back to this config."""
        parts = (["flip"] if self.flip else []) + ([f"crops@{self.crop_fraction:g}"] if self.crops else [])
        return "+".join(parts) or "none"


def parse_tta(spec: str | TTAConfig | None) -> TTAConfig:
    """Parses ``none`` / ``flip`` / ``crops[@FRACTION]`` joined by ``+`` (or ``,``) into a ``TTAConfig``.

    A bad spec is one ValueError line naming ``--tta`` (a spec of a MB shortened in it).
    """
    if isinstance(spec, TTAConfig):
        return spec
    if spec is None:
        return TTAConfig()
    flip, crops, fraction = False, False, TTAConfig.crop_fraction
    shown = reprlib.repr(spec)
    for part in spec.replace(",", "+").split("+"):
        part = part.strip().lower()
        if part in ("", "none"):
            continue
        if part == "flip":
            flip = True
        elif part.split("@")[0] == "crops":
            crops = True
            if "@" in part:
                try:
                    fraction = float(part.split("@", 1)[1])
                except ValueError:
                    raise ValueError(f"--tta={shown}: crop fraction in {reprlib.repr(part)} is not a number.") from None
                if not 0.0 < fraction <= 1.0:  # NaN and 1e309 (inf) included
                    raise ValueError(f"--tta={shown}: crop_fraction {fraction} is not in (0, 1].")
        else:
            raise ValueError(
                f"--tta={shown}: unknown part {reprlib.repr(part)}; expected none, flip, crops or "
                "crops@FRACTION joined by '+', e.g. 'flip+crops@0.875'."
            )
    return TTAConfig(flip=flip, crops=crops, crop_fraction=fraction)


def _five_crops(images: jax.Array, fraction: float) -> list[jax.Array]:
    _, h, w, c = images.shape
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    offsets = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), ((h - ch) // 2, (w - cw) // 2)]
    crops = []
    for top, left in offsets:
        crop = images[:, top : top + ch, left : left + cw, :]
        crops.append(jax.image.resize(crop, (crop.shape[0], h, w, c), method="bilinear", antialias=True))
    return crops


def tta_views(images: jax.Array, config: TTAConfig) -> jax.Array:
    """All views of a ``(B, H, W, C)`` batch, stacked as ``(V, B, H, W, C)``; view 0 is the image itself."""
    views = [images]
    if config.crops:
        views += _five_crops(images, config.crop_fraction)
    if config.flip:
        views += [v[:, :, ::-1, :] for v in views]
    return jnp.stack(views)


def predict_probs(
    logits_fn: Callable[[jax.Array], jax.Array], images: jax.Array, config: TTAConfig | str | None = None
) -> jax.Array:
    """Mean positive-class probability over the TTA views of each image; ``(B,)`` (more than two classes: ``(B, C)``).

    Probabilities are averaged rather than logits so that one very confident view
    cannot outvote the others without bound.
    """
    config = parse_tta(config)
    views = tta_views(images, config)
    v, b = views.shape[:2]
    probs = class_probabilities(logits_fn(views.reshape((v * b,) + views.shape[2:])))
    return probs.reshape((v, b) + probs.shape[1:]).mean(axis=0)
