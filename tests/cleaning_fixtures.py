"""A small chest_xray tree with planted problems, and what cleaning must say about it."""

import io
from pathlib import Path

import data_fixtures as fx
import numpy as np
from PIL import Image


def smooth(seed: int, size=(96, 96)) -> Image.Image:
    """A random grayscale picture with detail at many scales (like a radiograph).

    Detail up to 16 cycles matters: the pHash reads the 16x16 lowest frequencies, and a
    picture with less detail leaves most of them near zero, where a re-encoded copy flips
    their bits at random.
    """
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.uniform(30, 220, (16, 16)).astype(np.uint8))
    arr = np.asarray(coarse.resize(size, Image.Resampling.BICUBIC), np.float64)
    arr = arr + rng.normal(0, 4, arr.shape)  # film grain, so no two seeds share pixels
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def jpeg(im: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("L")


def near_copy(data: bytes) -> bytes:
    """Resized 96 -> 80 px, brightened by 6 levels and re-encoded at quality 85."""
    im = decoded(data).resize((80, 80), Image.Resampling.BILINEAR)
    arr = np.clip(np.asarray(im, np.int16) + 6, 0, 255).astype(np.uint8)
    return jpeg(Image.fromarray(arr), quality=85)


def build_tree() -> dict[str, bytes]:
    """{relative path: bytes} of the planted tree (see EXPECTED for what each file is)."""
    a, d, f = jpeg(smooth(1)), jpeg(smooth(4)), jpeg(smooth(6))
    conflict = jpeg(smooth(9))
    rng = np.random.default_rng(0)
    faint = np.clip(100 + rng.normal(0, 1.5, (96, 96)), 0, 255).astype(np.uint8)
    return {
        "train/NORMAL/IM-0001-0001.jpeg": a,
        # Same pixels in another container: exact means "same decoded pixels", not same bytes.
        "train/NORMAL/IM-0001-0002.png": fx.encode(decoded(a), "PNG"),
        "train/NORMAL/IM-0002-0001.jpeg": jpeg(smooth(2)),
        "train/NORMAL/IM-0003-0001.jpeg": jpeg(smooth(3)),
        "train/NORMAL/IM-0004-0001.jpeg": jpeg(Image.new("L", (96, 96), 128)),
        "train/NORMAL/IM-0005-0001.jpeg": jpeg(smooth(12))[:300],
        "train/NORMAL/IM-0006-0001.jpeg": conflict,
        "train/NORMAL/IM-0007-0001.jpeg": jpeg(smooth(13, size=(240, 72))),
        "train/PNEUMONIA/person1_bacteria_1.jpeg": d,
        "train/PNEUMONIA/person1_bacteria_2.jpeg": near_copy(d),
        "train/PNEUMONIA/person2_virus_3.jpeg": jpeg(smooth(5)),
        "train/PNEUMONIA/person3_bacteria_4.jpeg": f,
        "train/PNEUMONIA/person4_virus_5.jpeg": jpeg(smooth(7)),
        "train/PNEUMONIA/person5_bacteria_6.jpeg": jpeg(Image.fromarray(faint)),
        "train/PNEUMONIA/person6_bacteria_7.jpeg": conflict,
        "val/NORMAL/IM-0100-0001.jpeg": jpeg(smooth(20)),
        "val/PNEUMONIA/person100_virus_1.jpeg": jpeg(smooth(21)),
        "test/NORMAL/IM-0200-0001.jpeg": jpeg(smooth(30)),
        "test/PNEUMONIA/person30_bacteria_9.jpeg": f,  # = train person3: image leakage
        "test/PNEUMONIA/person4_virus_6.jpeg": jpeg(smooth(31)),  # patient 4 is in train too
    }


# file -> reason that `effnet-data clean` must give (and nothing else is excluded).
EXPECTED = {
    "train/NORMAL/IM-0005-0001.jpeg": "unreadable",
    "train/NORMAL/IM-0004-0001.jpeg": "blank",
    "train/PNEUMONIA/person5_bacteria_6.jpeg": "near_constant",
    "train/NORMAL/IM-0007-0001.jpeg": "extreme_aspect",
    "train/NORMAL/IM-0006-0001.jpeg": "label_conflict",
    "train/PNEUMONIA/person6_bacteria_7.jpeg": "label_conflict",
    "train/PNEUMONIA/person3_bacteria_4.jpeg": "leakage_duplicate",
    "train/PNEUMONIA/person4_virus_5.jpeg": "leakage_patient",
    "train/NORMAL/IM-0001-0002.png": "exact_duplicate",
    "train/PNEUMONIA/person1_bacteria_2.jpeg": "near_duplicate",
}
COUNTS_BEFORE = {
    "test": {"NORMAL": 1, "PNEUMONIA": 2},
    "train": {"NORMAL": 8, "PNEUMONIA": 7},
    "val": {"NORMAL": 1, "PNEUMONIA": 1},
}
COUNTS_AFTER = {
    "test": {"NORMAL": 1, "PNEUMONIA": 2},
    "train": {"NORMAL": 3, "PNEUMONIA": 2},
    "val": {"NORMAL": 1, "PNEUMONIA": 1},
}


def write(root: Path) -> Path:
    """Write the planted tree under `root` (a chest_xray folder) and return it."""
    return fx.write_tree(root, build_tree())
