"""Per-example image work: decode, augment (one affine warp), photometric jitter, normalise.

Everything here is a pure function of its inputs and a numpy Generator, so the
pipeline can derive all randomness from (seed, epoch, index) and stay reproducible.

Geometry convention: the output is a square `size` x `size` view of the whole frame
(aspect not kept, as the 224-px shared copy of the data already does), so cropping
at scale 1.0 keeps the lateral lung edges that a centre square crop would cut.
"""

import dataclasses
import io
import math

import numpy as np
from PIL import Image


def decode_gray(image, min_side: int = 0) -> Image.Image:
    """Decode encoded bytes or a uint8 array to an 8-bit grayscale PIL image.

    For JPEG bytes the decoder is asked for a reduced-size decode (DCT scaling) that
    still has at least `min_side` pixels on both sides, which is most of the speed-up
    when stored images are larger than the model's input.
    """
    if isinstance(image, np.ndarray):
        arr = image[..., 0] if image.ndim == 3 else image
        return Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), mode="L")
    im = Image.open(io.BytesIO(image))
    if min_side and im.format == "JPEG":
        im.draft("L", (min_side, min_side))
    if im.mode != "L":
        im = im.convert("L")
    im.load()  # decode now (Pillow is lazy), so errors and costs show up here
    if min_side:
        # Box-average by an integer factor while both sides stay >= min_side: cheap
        # anti-aliasing before the bilinear warp (which does not low-pass on its own).
        factor = min(im.size) // min_side
        if factor >= 2:
            im = im.reduce(factor)
    return im


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """The random draws for one training example (all in output-relative units)."""

    area: float = 1.0  # fraction of the frame's area the crop covers
    center: tuple[float, float] = (0.5, 0.5)  # crop centre, as fractions of width/height
    angle: float = 0.0  # degrees, counter-clockwise
    flip: bool = False
    shift: tuple[float, float] = (0.0, 0.0)  # translation, fractions of the output size
    brightness: float = 0.0  # additive, in units of full scale
    contrast: float = 1.0  # multiplicative, about the image mean
    gamma: float = 1.0  # grey level g -> 255 * (g / 255) ** gamma, before contrast and brightness
    clip: bool = True  # clip grey levels to 0..255 after the photometric changes


def draw_params(aug, rng: np.random.Generator) -> AugmentParams:
    """Draw one example's augmentation parameters from the `augment` ConfigDict."""
    if not aug.enabled:
        return AugmentParams()
    # Draw every value unconditionally so switching one augmentation off does not
    # change the values the others get for the same (seed, epoch, index).
    # The tenth draw (gamma) comes last, so the first nine are those of runs made before it.
    u = rng.uniform(size=10).tolist()  # python floats: keep later arithmetic in float32
    area, center, angle, flip, shift = 1.0, (0.5, 0.5), 0.0, False, (0.0, 0.0)
    if aug.scale_enabled:
        if not 0.0 < aug.scale_min <= aug.scale_max <= 1.0:
            raise ValueError(
                f"data.augment.scale_min/scale_max={aug.scale_min}/{aug.scale_max}: "
                "expected 0 < scale_min <= scale_max <= 1"
            )
        area = aug.scale_min + (aug.scale_max - aug.scale_min) * u[0]
        zoom_about = aug.get("zoom_about", "random")
        if zoom_about == "random":
            half = 0.5 * math.sqrt(area)  # the crop stays inside the frame
            center = (half + (1 - 2 * half) * u[1], half + (1 - 2 * half) * u[2])
        elif zoom_about != "center":
            raise ValueError(f"data.augment.zoom_about={zoom_about!r}: expected 'random' or 'center'")
    if aug.rotation_enabled:
        angle = aug.rotation * (2 * u[3] - 1)
    if aug.hflip_enabled:
        flip = bool(u[4] < aug.hflip)
    if aug.translate_enabled:
        shift = (aug.translate * (2 * u[5] - 1), aug.translate * (2 * u[6] - 1))
    brightness = aug.brightness * (2 * u[7] - 1) if aug.brightness_enabled else 0.0
    contrast = 1.0 + aug.contrast * (2 * u[8] - 1) if aug.contrast_enabled else 1.0
    # Log-uniform gamma: exposure curves of other scanners bend both ways alike.
    gamma = math.exp(aug.gamma * (2 * u[9] - 1)) if aug.get("gamma_enabled", False) else 1.0
    clip = bool(aug.get("clip_levels", True))
    return AugmentParams(area, center, angle, flip, shift, brightness, contrast, gamma, clip)


def warp(im: Image.Image, params: AugmentParams, size: int) -> np.ndarray:
    """Crop, rotate, flip and shift in ONE bilinear affine warp; returns (size, size) uint8."""
    w, h = im.size
    side = math.sqrt(params.area)
    cw, ch = side * w, side * h  # crop extent in source pixels
    cx, cy = params.center[0] * w, params.center[1] * h
    t = math.radians(params.angle)
    cos, sin = math.cos(t), math.sin(t)
    f = -1.0 if params.flip else 1.0
    # Output pixel (u, v) -> q = (u/size - 1/2, v/size - 1/2) -> r = R(t) F q - shift
    # -> source (cx + cw * r_x, cy + ch * r_y). Pillow wants this output->source map.
    a, b = cw * cos * f / size, -cw * sin / size
    d, e = ch * sin * f / size, ch * cos / size
    c = cx + cw * (-0.5 * cos * f + 0.5 * sin - params.shift[0])
    g = cy + ch * (-0.5 * sin * f - 0.5 * cos - params.shift[1])
    out = im.transform((size, size), Image.Transform.AFFINE, (a, b, c, d, e, g), resample=Image.Resampling.BILINEAR)
    return np.asarray(out)


def center_resize(im: Image.Image, size: int, crop: float = 1.0) -> np.ndarray:
    """Deterministic eval view: centre crop `crop` of each side, antialiased resize to size."""
    if not 0.0 < crop <= 1.0:
        raise ValueError(f"data.center_crop={crop}: expected a fraction in (0, 1]")
    w, h = im.size
    box = ((1 - crop) * w / 2, (1 - crop) * h / 2, (1 + crop) * w / 2, (1 + crop) * h / 2)
    out = im.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out)


class Normalizer:
    """Grayscale uint8 (H, W) -> float32 (H, W, 3), brightness/contrast, then (x - mean) / std.

    mean/std are in units of [0, 1] pixel values (as timm and the variant table give them).
    """

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, np.float32).reshape(-1)
        self.std = np.asarray(std, np.float32).reshape(-1)
        if self.mean.shape != (3,) or self.std.shape != (3,) or np.any(self.std <= 0):
            raise ValueError(f"mean={mean}, std={std}: expected 3 values each, std > 0")
        # Every output value depends only on the input grey level (given this image's mean),
        # so the whole photometric + normalise step is one 256 x 3 lookup table: much
        # cheaper than float arithmetic over H x W x 3 values.
        self.scale = (1.0 / (255.0 * self.std)).astype(np.float32)
        self.offset = (-self.mean / self.std).astype(np.float32)
        self._levels = np.arange(256, dtype=np.float32)
        self._identity = self._table(self._levels)

    def _table(self, levels: np.ndarray) -> np.ndarray:
        return (levels[:, None] * self.scale + self.offset).astype(np.float32)

    def table(
        self, gray: np.ndarray, brightness: float = 0.0, contrast: float = 1.0, gamma: float = 1.0, clip: bool = True
    ):
        """The (256, 3) float32 table mapping grey levels of `gray` to normalised RGB values.

        clip=False lets levels pushed past 0..255 by contrast/brightness keep their value.
        """
        if contrast == 1.0 and brightness == 0.0 and gamma == 1.0:
            return self._identity
        levels = self._levels
        if gamma == 1.0:
            m = float(gray.mean())
        else:
            levels = (255.0 * (levels / 255.0) ** gamma).astype(np.float32)
            # The mean of the gamma-corrected image, from the histogram (no H x W float pass).
            m = float(np.bincount(gray.ravel(), minlength=256) @ levels / gray.size)
        levels = (levels - m) * contrast + m + 255.0 * brightness
        return self._table(np.clip(levels, 0.0, 255.0) if clip else levels)

    def __call__(self, gray: np.ndarray, brightness: float = 0.0, contrast: float = 1.0, gamma: float = 1.0):
        """(H, W) uint8 -> (H, W, 3) float32, normalised."""
        return np.take(self.table(gray, brightness, contrast, gamma), gray, axis=0)
