"""Per-example host image work: decode, resize once, normalise (evaluation's lookup table).

Training augmentation is not here: it runs inside the train step, on the device
(data/augment.py). The resized view is a square view of the whole frame (aspect not
kept, as the 224-px shared copy of the data already does): `size` pixels a side for
evaluation, `frame_side` for training.
"""

import io
import math

import numpy as np
from PIL import Image, ImageOps

from effnet_jax.data import imaging


def decode_gray(image, min_side: int = 0) -> Image.Image:
    """Decode encoded bytes or a uint8 array to an 8-bit grayscale PIL image.

    For JPEG bytes the decoder is asked for a reduced-size decode (DCT scaling) that
    still has at least `min_side` pixels on both sides, which is most of the speed-up
    when stored images are larger than the model's input.
    """
    if isinstance(image, np.ndarray):
        arr = image[..., 0] if image.ndim == 3 else image
        return Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), mode="L")
    # Only the formats imaging checks: an external folder's file is decoded by the plugin that checked it.
    im = Image.open(io.BytesIO(image), formats=imaging.FORMATS)
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


def frame_side(size: int, zoom_area_min: float, source_side: int | None = None) -> int:
    """Side of the square frame training keeps: the smallest zoom crop still spans `size` source pixels.

    The device crops each zoomed view from this frame and resamples it to `size`, so a
    crop of `zoom_area_min` of the area keeps the detail the old host crop had. Capped at
    the source's own shorter side (enlarging adds no detail), never below `size`.
    """
    if not 0.0 < zoom_area_min:
        raise ValueError(f"data.augment.scale_min={zoom_area_min}: expected 0 < scale_min <= scale_max <= 1")
    side = int(size)
    if zoom_area_min < 1.0:
        side = math.ceil(size / math.sqrt(zoom_area_min) - 1e-6)  # no extra pixel from float rounding
    if source_side is not None:
        side = min(side, max(int(size), int(source_side)))
    return side


def source_side(image) -> int:
    """Shorter side of a stored image (encoded bytes: read from the header only, or a uint8 array)."""
    if isinstance(image, np.ndarray):
        return int(min(image.shape[:2]))
    with Image.open(io.BytesIO(image), formats=imaging.FORMATS) as im:
        return int(min(im.size))


def center_resize(im: Image.Image, size: int, crop: float = 1.0) -> np.ndarray:
    """Deterministic eval view: centre crop `crop` of each side, antialiased resize to size."""
    if not 0.0 < crop <= 1.0:
        raise ValueError(f"data.center_crop={crop}: expected a fraction in (0, 1]")
    w, h = im.size
    box = ((1 - crop) * w / 2, (1 - crop) * h / 2, (1 + crop) * w / 2, (1 + crop) * h / 2)
    out = im.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out)


# data.equalize: how grey levels are spread per image before normalising ("none": as stored).
EQUALIZE_MODES = ("none", "histogram")


def check_equalize(mode: str) -> str:
    """``mode`` when it is one of EQUALIZE_MODES; otherwise ValueError naming data.equalize."""
    if mode not in EQUALIZE_MODES:
        raise ValueError(f"data.equalize={mode!r}: expected one of {', '.join(EQUALIZE_MODES)}")
    return mode


def equalize_mode(data_config) -> str:
    """A ``data`` config's (or run config's) data.equalize, checked; "none" where it has no such key."""
    return check_equalize(data_config.get("equalize", "none") or "none")


def equalize(gray: np.ndarray, mode: str = "none") -> np.ndarray:
    """(H, W) uint8 -> (H, W) uint8 with its grey levels spread by ``mode`` (data.equalize).

    "histogram" is Pillow's ``ImageOps.equalize``: every image's levels spread over the whole
    range, so how light or hazy an X-ray was exposed no longer sets its contrast. It runs on
    the view the model sees (after the resize), in training and at evaluation alike.
    """
    if check_equalize(mode) == "none":
        return gray
    return np.asarray(ImageOps.equalize(Image.fromarray(np.ascontiguousarray(gray, np.uint8), mode="L")))


class Normalizer:
    """Grayscale uint8 (H, W) -> float32 (H, W, 3), (x / 255 - mean) / std per channel.

    mean/std are in units of [0, 1] pixel values (as timm and the variant table give them).
    """

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, np.float32).reshape(-1)
        self.std = np.asarray(std, np.float32).reshape(-1)
        if self.mean.shape != (3,) or self.std.shape != (3,) or np.any(self.std <= 0):
            raise ValueError(f"mean={mean}, std={std}: expected 3 values each, std > 0")
        # Every output value depends only on the input grey level, so normalising is one
        # 256 x 3 lookup table: much cheaper than float arithmetic over H x W x 3 values.
        self.scale = (1.0 / (255.0 * self.std)).astype(np.float32)
        self.offset = (-self.mean / self.std).astype(np.float32)
        self._table = (np.arange(256, dtype=np.float32)[:, None] * self.scale + self.offset).astype(np.float32)

    def table(self, gray: np.ndarray | None = None) -> np.ndarray:
        """The (256, 3) float32 table mapping grey levels to normalised RGB values."""
        del gray  # the same for every image (kept for callers that pass one)
        return self._table

    def __call__(self, gray: np.ndarray):
        """(H, W) uint8 -> (H, W, 3) float32, normalised."""
        return np.take(self._table, gray, axis=0)
