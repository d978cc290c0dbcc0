"""Training augmentation as JAX ops: one affine warp, scatter haze, photometric and detector jitter, erasing, then normalisation.

The host hands the train step uint8 grey frames resized once (to the model's size, or
larger when zooming: transforms.frame_side); everything random happens here, inside the
compiled step, on whatever device runs it (CPU, GPU or TPU alike), and the one warp
resamples the view to the model's size. Each example's draws come from
``fold_in(key, i)``, with ``i`` its position in the global batch, so an augmented batch
does not depend on how the batch is split over devices.

Geometry convention: the output is a square view of the whole (already square) frame,
so zooming at scale 1.0 keeps the lateral lung edges that a centre crop would cut.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

ZOOM_ABOUT = ("random", "center")


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    """The ranges the draws come from (a switched-off augmentation has range zero); hashable, so static under jit."""

    area_min: float = 1.0  # fraction of the frame's area the zoom crop covers, drawn from [area_min, area_max]
    area_max: float = 1.0
    zoom_random: bool = True  # crop centre anywhere the crop fits; False: the frame centre
    rotation: float = 0.0  # degrees, counter-clockwise, drawn from [-rotation, rotation]
    hflip: float = 0.0  # probability of a horizontal flip
    translate: float = 0.0  # shift per axis, fraction of the output size, drawn from [-translate, translate]
    brightness: float = 0.0  # additive, in units of full scale, drawn from [-brightness, brightness]
    contrast: float = 0.0  # factor about the image mean, drawn from [1 - contrast, 1 + contrast]
    gamma: float = 0.0  # grey level g -> 255 * (g / 255) ** exp(u), u from [-gamma, gamma]
    sharpness: float = 0.0  # unsharp-mask amount drawn from [-sharpness, sharpness]; -1 = fully blurred
    noise: float = 0.0  # std of additive Gaussian noise, grey levels, drawn from [0, noise]
    erase: float = 0.0  # probability of erasing one rectangle of the view (random erasing)
    erase_area: float = 0.25  # largest fraction of the view's area it covers (at least ERASE_AREA_MIN)
    haze: float = 0.0  # blend toward a wide blur (scatter), amount drawn from [0, haze]
    # Per class c, a further contrast factor drawn from [class_contrast[c], 1]; () = off.
    class_contrast: tuple = ()
    clip: bool = True  # clip grey levels to 0..255 after the photometric changes
    size: int = 0  # side of the augmented view (the model's input); 0: the frame's own side

    @property
    def photometric(self) -> bool:
        return bool(self.brightness or self.contrast or self.gamma or self.class_contrast)

    @property
    def detector(self) -> bool:
        return bool(self.sharpness or self.noise)

    @property
    def erasing(self) -> bool:
        return bool(self.erase)

    @property
    def hazy(self) -> bool:
        return bool(self.haze)


# What each range of ``data.augment`` may be: beyond these the draws stop meaning what their
# names say (a flip probability above 1, a contrast factor below 0, a turn past half a turn).
_RANGES = (
    ("rotation", 0.0, 180.0, "degrees"),
    ("hflip", 0.0, 1.0, "a probability"),
    ("translate", 0.0, 0.5, "a fraction of the output size"),
    ("brightness", 0.0, 1.0, "a fraction of full scale"),
    ("contrast", 0.0, 1.0, "a fraction (factors from 1 - contrast to 1 + contrast)"),
    ("gamma", 0.0, 3.0, "a log exponent"),
    ("sharpness", 0.0, 1.0, "an unsharp-mask amount (1: from fully blurred to twice the detail)"),
    ("noise", 0.0, 255.0, "a standard deviation in grey levels"),
    ("erase", 0.0, 1.0, "a probability"),
    ("erase_area", 0.02, 1.0, "a fraction of the view's area"),
    ("haze", 0.0, 1.0, "a blend fraction (1: up to the wide blur alone)"),
)


def spec_from_config(aug, size: int = 0) -> AugmentSpec | None:
    """The ``data.augment`` ConfigDict as an AugmentSpec giving ``size``-pixel views; None when augmentation is off."""
    if not aug.enabled:
        return None
    for key, low, high, meaning in _RANGES:
        value = aug.get(key)
        if value is not None and not (isinstance(value, (int, float)) and low <= value <= high):  # refuses nan
            raise ValueError(f"data.augment.{key}={value!r}: expected {meaning}, from {low} to {high}")
    area_min = area_max = 1.0
    if aug.scale_enabled:
        if not 0.0 < aug.scale_min <= aug.scale_max <= 1.0:
            raise ValueError(
                f"data.augment.scale_min/scale_max={aug.scale_min}/{aug.scale_max}: "
                "expected 0 < scale_min <= scale_max <= 1"
            )
        area_min, area_max = float(aug.scale_min), float(aug.scale_max)
    class_contrast = _class_contrast(aug) if aug.get("class_contrast_enabled", True) else ()
    zoom_about = aug.get("zoom_about", "random")
    if zoom_about not in ZOOM_ABOUT:
        raise ValueError(f"data.augment.zoom_about={zoom_about!r}: expected 'random' or 'center'")
    return AugmentSpec(
        area_min=area_min,
        area_max=area_max,
        zoom_random=zoom_about == "random",
        rotation=float(aug.rotation) if aug.rotation_enabled else 0.0,
        hflip=float(aug.hflip) if aug.hflip_enabled else 0.0,
        translate=float(aug.translate) if aug.translate_enabled else 0.0,
        brightness=float(aug.brightness) if aug.brightness_enabled else 0.0,
        contrast=float(aug.contrast) if aug.contrast_enabled else 0.0,
        gamma=float(aug.gamma) if aug.get("gamma_enabled", False) else 0.0,
        sharpness=float(aug.get("sharpness", 0.0)) if aug.get("sharpness_enabled", False) else 0.0,
        noise=float(aug.get("noise", 0.0)) if aug.get("noise_enabled", False) else 0.0,
        erase=float(aug.get("erase", 0.0)) if aug.get("erase_enabled", False) else 0.0,
        erase_area=float(aug.get("erase_area", 0.25)),
        haze=float(aug.get("haze", 0.0)) if aug.get("haze_enabled", False) else 0.0,
        class_contrast=class_contrast,
        clip=bool(aug.get("clip_levels", True)),
        size=int(size),
    )


def _class_contrast(aug) -> tuple:
    value = aug.get("class_contrast") or ()
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 < v <= 1.0 for v in value
    ):
        raise ValueError(
            f"data.augment.class_contrast={value!r}: expected one lower bound per class, each in (0, 1] "
            "(e.g. (0.7, 1.0)), or () for off"
        )
    return tuple(float(v) for v in value)


def check_class_count(spec: AugmentSpec | None, class_names) -> None:
    """``data.augment.class_contrast`` must give one bound per class of the training data."""
    if spec is not None and spec.class_contrast and len(spec.class_contrast) != len(class_names):
        raise ValueError(
            f"config.data.augment.class_contrast={spec.class_contrast}: {len(spec.class_contrast)} bounds for "
            f"{len(class_names)} classes {tuple(class_names)}; give one per class, in that order"
        )


def draw(spec: AugmentSpec, key) -> dict:
    """One example's parameters from its key: area, centre, angle (degrees), flip, shift, photometric."""
    # Ten draws always, in a fixed order, so switching one augmentation off leaves the
    # values the others get for the same key unchanged.
    u = jax.random.uniform(key, (10,), jnp.float32)
    area = spec.area_min + (spec.area_max - spec.area_min) * u[0]
    if spec.zoom_random:
        half = 0.5 * jnp.sqrt(area)  # the crop stays inside the frame
        center = (half + (1 - 2 * half) * u[1], half + (1 - 2 * half) * u[2])
    else:
        center = (jnp.float32(0.5), jnp.float32(0.5))
    return {
        "area": area,
        "center": center,
        "angle": spec.rotation * (2 * u[3] - 1),
        "flip": u[4] < spec.hflip,
        "shift": (spec.translate * (2 * u[5] - 1), spec.translate * (2 * u[6] - 1)),
        "brightness": spec.brightness * (2 * u[7] - 1),
        "contrast": 1.0 + spec.contrast * (2 * u[8] - 1),
        # Log-uniform: exposure curves of other scanners bend both ways alike.
        "gamma": jnp.exp(spec.gamma * (2 * u[9] - 1)),
    }


# Folded into an example's key for the detector draws, so that the ten draws above keep
# their values for recipes written before these augmentations existed.
_DETECTOR_STREAM = 1
_NOISE_STREAM = 2
_ERASE_STREAM = 3
_ERASE_FILL_STREAM = 4
_HAZE_STREAM = 5
_CLASS_CONTRAST_STREAM = 6

# Random erasing's rectangle: at least this fraction of the view's area, its height over
# width log-uniform in [1 / ERASE_ASPECT, ERASE_ASPECT] (Zhong et al. 2020 draw alike).
ERASE_AREA_MIN = 0.02
ERASE_ASPECT = 3.0


def draw_detector(spec: AugmentSpec, key) -> dict:
    """One example's sharpness amount and noise level (grey levels), from its own stream of ``key``."""
    u = jax.random.uniform(jax.random.fold_in(key, _DETECTOR_STREAM), (2,), jnp.float32)
    return {"sharpness": spec.sharpness * (2 * u[0] - 1), "noise": spec.noise * u[1]}


def draw_erase(spec: AugmentSpec, key, size: int) -> dict:
    """One example's erased rectangle in a ``size``-pixel view, from its own stream of ``key``.

    ``on`` (probability ``spec.erase``), ``top``/``left`` (its first row and column) and
    ``height``/``width`` in pixels: an area fraction uniform in [ERASE_AREA_MIN, erase_area],
    an aspect log-uniform about 1, the rectangle inside the view.
    """
    u = jax.random.uniform(jax.random.fold_in(key, _ERASE_STREAM), (5,), jnp.float32)
    area = (ERASE_AREA_MIN + (spec.erase_area - ERASE_AREA_MIN) * u[1]) * size * size
    aspect = jnp.exp(math.log(ERASE_ASPECT) * (2 * u[2] - 1))
    height = jnp.clip(jnp.round(jnp.sqrt(area * aspect)), 1, size)
    width = jnp.clip(jnp.round(jnp.sqrt(area / aspect)), 1, size)
    return {
        "on": u[0] < spec.erase,
        "top": jnp.floor(u[3] * (size - height + 1)),
        "left": jnp.floor(u[4] * (size - width + 1)),
        "height": height,
        "width": width,
    }


def draw_haze(spec: AugmentSpec, key):
    """One example's haze amount, uniform in [0, spec.haze], from its own stream of ``key``."""
    return spec.haze * jax.random.uniform(jax.random.fold_in(key, _HAZE_STREAM), (), jnp.float32)


# The haze's blur: a Gaussian whose sigma is this fraction of the view's side (14 px at 224),
# wide enough to carry no rib or vessel, narrow enough to keep the lungs' outline.
HAZE_SIGMA = 1 / 16


def draw_class_contrast(spec: AugmentSpec, key, label):
    """One example's further contrast factor, from [class_contrast[label], 1], on its own stream of ``key``."""
    low = jnp.asarray(spec.class_contrast, jnp.float32)[label]
    return low + (1.0 - low) * jax.random.uniform(jax.random.fold_in(key, _CLASS_CONTRAST_STREAM), (), jnp.float32)


def _gaussian_taps(sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1, dtype=np.float64) / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def wide_blur(gray, sigma: float):
    """(H, W) float image blurred by a separable Gaussian of ``sigma`` pixels, edges replicated."""
    taps = _gaussian_taps(sigma)
    radius = len(taps) // 2
    padded = jnp.pad(gray, radius, mode="edge")[None, None]  # (N, C, H, W) for the convolution
    conv = functools.partial(jax.lax.conv_general_dilated, window_strides=(1, 1), padding="VALID")
    rows = conv(padded, jnp.asarray(taps).reshape(1, 1, -1, 1))
    return conv(rows, jnp.asarray(taps).reshape(1, 1, 1, -1))[0, 0]


def haze(gray, amount):
    """Scattered radiation's veil: ``(1 - amount) * g + amount * wide_blur(g)``.

    Scatter adds a smooth, low-frequency image to the primary one, so fine markings lose
    contrast while the mean level stays: a normal chest taken with more scatter looks hazy,
    as an infiltrate does. Drawn in both classes alike, haze alone stops telling them apart.
    """
    return gray + amount * (wide_blur(gray, HAZE_SIGMA * gray.shape[0]) - gray)


def erase(gray, params: dict, fill_key, clip: bool = True):
    """The rectangle of ``params`` (draw_erase) filled with Gaussian noise of the image's own mean and spread.

    The model cannot lean on any one region (the perihilar markings, a side marker) when
    any one may be gone; noise of the image's own levels leaves no edge of flat grey to find.
    """
    rows = jnp.arange(gray.shape[0], dtype=jnp.float32)[:, None]
    cols = jnp.arange(gray.shape[1], dtype=jnp.float32)[None, :]
    inside = (
        params["on"]
        & (rows >= params["top"])
        & (rows < params["top"] + params["height"])
        & (cols >= params["left"])
        & (cols < params["left"] + params["width"])
    )
    fill = jnp.mean(gray) + jnp.std(gray) * jax.random.normal(fill_key, gray.shape, jnp.float32)
    if clip:
        fill = jnp.clip(fill, 0.0, 255.0)
    return jnp.where(inside, fill, gray)


def identity_params() -> dict:
    """Parameters that leave an image as it is (for tests and references)."""
    zero = jnp.float32(0.0)
    return {
        "area": jnp.float32(1.0),
        "center": (jnp.float32(0.5), jnp.float32(0.5)),
        "angle": zero,
        "flip": jnp.bool_(False),
        "shift": (zero, zero),
        "brightness": zero,
        "contrast": jnp.float32(1.0),
        "gamma": jnp.float32(1.0),
    }


def source_coordinates(params: dict, height: int, width: int, out_height: int = 0, out_width: int = 0):
    """(row, col) source coordinates in a (height, width) frame, pixel centres at integers, of every output pixel.

    The output is (out_height, out_width), by default the frame's own shape.
    """
    out_height, out_width = out_height or height, out_width or width
    side = jnp.sqrt(params["area"])
    t = params["angle"] * (math.pi / 180.0)
    cos, sin = jnp.cos(t), jnp.sin(t)
    f = jnp.where(params["flip"], -1.0, 1.0)
    # Output point q (from the frame centre, in pixels, at pixel centres) -> R(t) F q scaled by
    # the crop's side, minus the shift -> source point about the crop centre. Pixel units
    # (no division) keep the identity exact. The frame is square, so rotation needs no aspect.
    # A frame larger than the output: output pixels are measured in frame pixels (the
    # factor is exactly 1 when the sizes agree, so the identity stays exact).
    dy, dx = jnp.meshgrid(
        (jnp.arange(out_height, dtype=jnp.float32) + (0.5 - out_height / 2)) * (height / out_height),
        (jnp.arange(out_width, dtype=jnp.float32) + (0.5 - out_width / 2)) * (width / out_width),
        indexing="ij",
    )
    cx, cy = params["center"][0] * width, params["center"][1] * height
    col = cx + side * (cos * f * dx - sin * dy * (width / height) - width * params["shift"][0])
    row = cy + side * (sin * f * dx * (height / width) + cos * dy - height * params["shift"][1])
    return row - 0.5, col - 0.5


def warp(gray, params: dict, size: int = 0):
    """Zoom, rotate, flip and shift a (H, W) float frame in ONE bilinear warp to (size, size); outside it is 0.

    ``size`` 0 keeps the frame's shape.
    """
    rows, cols = source_coordinates(params, *gray.shape, size, size)
    return jax.scipy.ndimage.map_coordinates(gray, [rows, cols], order=1, mode="constant", cval=0.0)


def photometric(gray, params: dict, clip: bool = True):
    """Gamma, then contrast about the image mean and brightness, on float grey levels 0..255."""
    levels = 255.0 * (gray / 255.0) ** params["gamma"]
    m = jnp.mean(levels)
    levels = (levels - m) * params["contrast"] + m + 255.0 * params["brightness"]
    return jnp.clip(levels, 0.0, 255.0) if clip else levels


# A Gaussian of sigma 1 pixel, 5 taps: the blur the unsharp mask subtracts and adds back.
_BLUR_TAPS = np.exp(-0.5 * np.arange(-2, 3, dtype=np.float64) ** 2)
_BLUR_TAPS = (_BLUR_TAPS / _BLUR_TAPS.sum()).astype(np.float32)


def blur(gray):
    """(H, W) float image blurred by a separable 5-tap Gaussian (sigma 1 px), edges replicated."""
    h, w = gray.shape
    padded = jnp.pad(gray, 2, mode="edge")
    rows = sum(t * padded[i : i + h, :] for i, t in enumerate(_BLUR_TAPS))
    return sum(t * rows[:, i : i + w] for i, t in enumerate(_BLUR_TAPS))


def detector(gray, params: dict, noise_key, clip: bool = True):
    """Another detector's look: unsharp mask by ``params['sharpness']`` (negative blurs), then noise.

    ``g + a * (g - blur(g))``: a = -1 gives the blurred image, a = 1 twice the detail. The
    noise is Gaussian with standard deviation ``params['noise']`` grey levels, per pixel.
    """
    out = gray + params["sharpness"] * (gray - blur(gray))
    out = out + params["noise"] * jax.random.normal(noise_key, gray.shape, jnp.float32)
    return jnp.clip(out, 0.0, 255.0) if clip else out


def normalise(gray, mean, std):
    """(..., H, W) grey levels 0..255 -> (..., H, W, 3) float32, (x / 255 - mean) / std per channel."""
    mean = np.asarray(mean, np.float32).reshape(-1)
    std = np.asarray(std, np.float32).reshape(-1)
    if mean.shape != (3,) or std.shape != (3,) or np.any(std <= 0):
        raise ValueError(f"mean={mean.tolist()}, std={std.tolist()}: expected 3 values each, std > 0")
    # The same float32 constants as the host's lookup table (transforms.Normalizer).
    scale = (1.0 / (255.0 * std)).astype(np.float32)
    offset = (-mean / std).astype(np.float32)
    return gray.astype(jnp.float32)[..., None] * scale + offset


def augment_one(gray, key, spec: AugmentSpec, label=None):
    """One (H, W) grey image (float, 0..255) of class ``label`` augmented with the draws of ``key``.

    ``label`` is read only by ``spec.class_contrast``.
    """
    params = draw(spec, key)
    if spec.class_contrast:
        if label is None:
            raise ValueError("data.augment.class_contrast draws by class: augment_one needs the example's label")
        params["contrast"] = params["contrast"] * draw_class_contrast(spec, key, label)
    out = warp(gray, params, spec.size)
    if spec.hazy:
        # Before the levels: scatter reaches the detector with the primary image, before any display curve.
        out = haze(out, draw_haze(spec, key))
    if spec.photometric:
        out = photometric(out, params, spec.clip)
    if spec.detector:
        # After the levels: gamma's power is undefined for the negative values noise can give.
        out = detector(out, draw_detector(spec, key), jax.random.fold_in(key, _NOISE_STREAM), spec.clip)
    if spec.erasing:
        # Last: the rectangle's fill has the view's final levels, not ones changed after it.
        out = erase(out, draw_erase(spec, key, out.shape[0]), jax.random.fold_in(key, _ERASE_FILL_STREAM), spec.clip)
    return out


def example_keys(key, count: int, first_index=0):
    """The per-example keys of a batch: ``fold_in(key, first_index + i)``."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(first_index + jnp.arange(count, dtype=jnp.uint32))


def prepare_batch(gray, key, spec: AugmentSpec | None, mean, std, first_index=0, labels=None):
    """(B, F, F) uint8 grey frames -> (B, S, S, 3) float32 model input, augmented when ``spec`` is set.

    S is ``spec.size`` (the frame's side when 0 or without a spec: no zoom, so the host
    frame is already the model's size).

    ``first_index`` is the position of the batch's first row in the global batch (pmap
    passes its device's offset), so every example gets the same draws however the batch
    is split. ``labels`` (B,) are needed by ``spec.class_contrast`` alone.
    """
    images = gray.astype(jnp.float32)
    if spec is not None:
        keys = example_keys(key, gray.shape[0], first_index)
        if spec.class_contrast:
            if labels is None:
                raise ValueError("data.augment.class_contrast draws by class: prepare_batch needs the batch's labels")
            images = jax.vmap(augment_one, in_axes=(0, 0, None, 0))(images, keys, spec, labels)
        else:
            images = jax.vmap(augment_one, in_axes=(0, 0, None))(images, keys, spec)
    return normalise(images, mean, std)
