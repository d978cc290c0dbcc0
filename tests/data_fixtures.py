"""Helpers that write small chest_xray-style trees and npz files for the data tests."""

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

# Relative to the repository root's parent: /work/shared/data/chest_xray in CI.
SHARED_CHEST_XRAY = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray"


def xray(seed: int, size=(40, 32), mode="L") -> Image.Image:
    """A small random grayscale picture in the given Pillow mode."""
    w, h = size
    gray = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    im = Image.fromarray(gray, mode="L")
    return im if mode == "L" else im.convert(mode)


def encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def jpeg(seed: int, size=(40, 32), mode="L") -> bytes:
    return encode(xray(seed, size, mode), "JPEG")


def png16(seed: int, size=(40, 32)) -> bytes:
    """A 16-bit grayscale PNG using 12 bits (values 1000..4000), like many DICOM exports."""
    w, h = size
    arr = np.random.default_rng(seed).integers(1000, 4001, (h, w)).astype(np.uint16)
    arr[0, 0], arr[0, 1] = 1000, 4000  # pin the range so the 8-bit result spans 0..255
    return encode(Image.fromarray(arr), "PNG")


# A valid tree with 3 NORMAL patients and 4 PNEUMONIA patients in train.
GOOD_TREE = {
    "train/NORMAL/IM-0001-0001.jpeg": lambda: jpeg(1),
    "train/NORMAL/IM-0001-0002.jpeg": lambda: jpeg(2),
    "train/NORMAL/IM-0002-0001.jpeg": lambda: jpeg(3, size=(64, 48)),
    "train/NORMAL/NORMAL2-IM-0003-0001.jpeg": lambda: jpeg(4, mode="RGB"),
    "train/NORMAL/IM-0004-0001.png": lambda: png16(5),
    "train/PNEUMONIA/person1_bacteria_1.jpeg": lambda: jpeg(6),
    "train/PNEUMONIA/person1_bacteria_2.jpeg": lambda: jpeg(7),
    "train/PNEUMONIA/person2_virus_3.jpeg": lambda: jpeg(8, mode="CMYK"),
    "train/PNEUMONIA/person3_bacteria_4.png": lambda: encode(xray(9, mode="RGBA"), "PNG"),
    "train/PNEUMONIA/person4_virus_5.png": lambda: encode(xray(10, mode="P"), "PNG"),
    "train/PNEUMONIA/person4_virus_6.jpeg": lambda: jpeg(11),
    "val/NORMAL/IM-0100-0001.jpeg": lambda: jpeg(12),
    "val/PNEUMONIA/person100_virus_1.jpeg": lambda: jpeg(13),
    "test/NORMAL/IM-0200-0001.jpeg": lambda: jpeg(14),
    "test/NORMAL/IM-0201-0001.jpeg": lambda: jpeg(15),
    "test/PNEUMONIA/person200_bacteria_1.jpeg": lambda: jpeg(16),
}
GOOD_COUNTS = {"train": [5, 6], "val": [1, 1], "test": [2, 1]}


def write_tree(root: Path, files: dict) -> Path:
    """Write {relative path: bytes or callable -> bytes}; a path ending in '/' makes a folder."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content() if callable(content) else content)
    return root


def zip_tree(folder: Path, zip_path: Path, prefix: str = "chest_xray/", extra=None) -> Path:
    """Zip `folder` under `prefix`, plus extra {member name: bytes} entries."""
    with zipfile.ZipFile(zip_path, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return zip_path


def write_mnist_npz(path: Path, size: int = 28, counts=None, seed: int = 0) -> dict:
    """Write a MedMNIST-layout npz; returns the arrays written."""
    counts = counts or {"train": 12, "val": 4, "test": 6}
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in counts.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3 != 0).astype(np.uint8)[:, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays
