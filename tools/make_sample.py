"""Writes the bundled sample of real chest X-rays (effnet_jax/data/sample) from the Kermany train/ folder.

    python tools/make_sample.py [--data=../shared/data/chest_xray/train] [--out=effnet_jax/data/sample]

One image per patient, patients drawn with a fixed seed, so train/ and validation/ of the
sample never share a patient; each class is balanced, PNEUMONIA keeps train/'s bacteria/virus
mix. Images are downscaled to SIDE x SIDE grayscale JPEG (quality 90) to keep the sample small.
Only ever from chest_xray/train, never from the external or test images.
"""

from __future__ import annotations

import argparse
import io
import pathlib

import numpy as np
from PIL import Image

from effnet_jax.data.kermany import parse_name

SIDE = 144
QUALITY = 90
# Images per class in each part of the sample.
PER_CLASS = {"train": 100, "validation": 50}


def _one_per_patient(folder: pathlib.Path, cls: str, rng: np.random.Generator) -> list[pathlib.Path]:
    by_patient: dict[str, list[pathlib.Path]] = {}
    for path in sorted(folder.iterdir()):
        by_patient.setdefault(parse_name(path.name, cls)[0], []).append(path)
    patients = sorted(by_patient)
    return [by_patient[patients[i]][0] for i in rng.permutation(len(patients))]


def _encode(path: pathlib.Path) -> bytes:
    with Image.open(path) as im:
        small = im.convert("L").resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    small.save(out, format="JPEG", quality=QUALITY, optimize=True)
    return out.getvalue()


def main():
    root = pathlib.Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(root.parent / "shared" / "data" / "chest_xray" / "train"))
    parser.add_argument("--out", default=str(root / "effnet_jax" / "data" / "sample"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data, out = pathlib.Path(args.data), pathlib.Path(args.out)
    if "external" in str(data.resolve()):
        raise SystemExit(f"--data={data}: the sample comes from chest_xray/train only, never external data")
    rng = np.random.default_rng(args.seed)
    total = 0
    for cls in ("NORMAL", "PNEUMONIA"):
        chosen = _one_per_patient(data / cls, cls, rng)
        start = 0
        for part, n in PER_CLASS.items():
            target = out / part / cls
            target.mkdir(parents=True, exist_ok=True)
            for path in chosen[start : start + n]:
                blob = _encode(path)
                (target / path.name).write_bytes(blob)
                total += len(blob)
            start += n
    print(f"wrote {sum(PER_CLASS.values()) * 2} images, {total / 1e6:.2f} MB, under {out}")


if __name__ == "__main__":
    main()
