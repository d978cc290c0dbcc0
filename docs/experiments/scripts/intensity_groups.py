"""Grey-level statistics of an evaluated run's external errors beside the training classes.

    effnet-eval --workdir=RUN --split=external
    python docs/experiments/scripts/intensity_groups.py RUN --train=DATA/chest_xray/train \
        --external=DATA/chest_xray_external

Groups: a random sample of each training class, and the external NORMAL images the run calls
PNEUMONIA at its operating threshold (false positives), those it calls NORMAL, and the
external PNEUMONIA images. Per group, the mean over its images of: mean grey level, its
standard deviation over the whole frame and over the central crop (the middle three quarters
each way, mostly lung field), the 5th and 95th percentiles, and the fraction above 200.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib

import numpy as np
from PIL import Image

COLUMNS = ("mean", "std", "central std", "p5", "p95", "> 200")


def grey_stats(path: pathlib.Path) -> list[float]:
    with Image.open(path) as img:
        a = np.asarray(img.convert("L"), np.float32)
    h, w = a.shape
    centre = a[h // 8 : h - h // 8, w // 8 : w - w // 8]
    return [a.mean(), a.std(), centre.std(), np.percentile(a, 5), np.percentile(a, 95), (a > 200).mean()]


def latest_report(run: pathlib.Path) -> pathlib.Path:
    reports = sorted(run.glob("eval/external_*/metrics.json"), key=lambda p: p.stat().st_mtime)
    if not reports:
        raise SystemExit(f"{run}: no eval/external_*/metrics.json; run effnet-eval --split=external first")
    return reports[-1].parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=pathlib.Path)
    parser.add_argument("--train", type=pathlib.Path, required=True, help="train/ with NORMAL/ and PNEUMONIA/")
    parser.add_argument("--external", type=pathlib.Path, required=True, help="the external folder the run scored")
    parser.add_argument("--per_class", type=int, default=300, help="training images sampled per class")
    args = parser.parse_args()

    report = latest_report(args.run)
    threshold = json.loads((report / "metrics.json").read_text())["operating_threshold"]
    with open(report / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    normal = [r for r in rows if r["label"] == "0"]
    groups = {
        "external NORMAL called PNEUMONIA": [r["file"] for r in normal if float(r["prob_pneumonia"]) >= threshold],
        "external NORMAL called NORMAL": [r["file"] for r in normal if float(r["prob_pneumonia"]) < threshold],
        "external PNEUMONIA": [r["file"] for r in rows if r["label"] == "1"],
    }
    stats = {}
    rng = np.random.default_rng(0)
    for name in ("NORMAL", "PNEUMONIA"):
        files = sorted(p for p in (args.train / name).iterdir() if p.is_file())
        picked = rng.choice(len(files), min(args.per_class, len(files)), replace=False)
        stats[f"train {name}"] = np.array([grey_stats(files[i]) for i in sorted(picked)])
    for name, files in groups.items():
        stats[name] = np.array([grey_stats(args.external / f) for f in files]).reshape(-1, len(COLUMNS))

    print(f"{'group':34s} {'images':>6s} " + " ".join(f"{c:>11s}" for c in COLUMNS))
    for name, values in stats.items():
        means = values.mean(0) if len(values) else [float("nan")] * len(COLUMNS)
        print(f"{name:34s} {len(values):6d} " + " ".join(f"{v:11.3f}" for v in means))


if __name__ == "__main__":
    main()
