"""An exclusion list of training images whose label every given run rejects (suspected label noise).

    effnet-eval --workdir=runs/pneumonia/members/seed_0 --split=train --bootstrap=0 --out_dir=noise/seed_0
    effnet-eval --workdir=runs/pneumonia/members/seed_1 --split=train --bootstrap=0 --out_dir=noise/seed_1
    python docs/experiments/scripts/label_noise.py noise/seed_0 noise/seed_1 --max_prob=0.1 \
        --data_dir=DATA/chest_xray --out=noise/exclusions.json
    effnet-train --config=configs/pneumonia.py ... --config.data.exclude_list=noise/exclusions.json

Reads each report's predictions.csv (one row per training image: file, label, probability of
PNEUMONIA) and lists the images to which every run gives their own label a probability below
--max_prob. The runs trained on these images (2 epochs under strong augmentation, so they
fit little of train/ by heart): an image they all still reject is mislabelled or ambiguous.
Class folders are found under --data_dir/train, and the list is the exclusions format that
data.exclude_list reads (effnet_jax/data/exclusions.py); nothing is deleted.
"""

from __future__ import annotations

import argparse
import csv
import pathlib

from effnet_jax.data import exclusions

CLASSES = ("NORMAL", "PNEUMONIA")


def read(report: pathlib.Path) -> dict[str, tuple[int, float]]:
    with open(report / "predictions.csv", newline="") as f:
        return {r["file"]: (int(r["label"]), float(r["prob_pneumonia"])) for r in csv.DictReader(f)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=pathlib.Path, help="effnet-eval --split=train output folders")
    parser.add_argument("--max_prob", type=float, default=0.1, help="largest probability of the given label")
    parser.add_argument("--data_dir", type=pathlib.Path, required=True, help="the chest_xray folder trained on")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="exclusion list to write (.json or .csv)")
    args = parser.parse_args()
    runs = [read(r) for r in args.reports]
    common = set(runs[0]).intersection(*runs[1:])
    entries = []
    for name in sorted(common):
        label = runs[0][name][0]
        if any(run[name][0] != label for run in runs):
            raise SystemExit(f"{name}: the reports disagree on its label")
        given = [p if label == 1 else 1 - p for _, p in (run[name] for run in runs)]
        if max(given) >= args.max_prob:
            continue
        folder = CLASSES[label]
        if not (args.data_dir / "train" / folder / name).is_file():
            raise SystemExit(f"{name}: not in {args.data_dir / 'train' / folder}")
        detail = ", ".join(f"{g:.3f}" for g in given)
        entries.append({"file": f"train/{folder}/{name}", "reason": "label_rejected", "detail": detail})
    exclusions.write(args.out, entries, max_prob=args.max_prob, reports=[str(r) for r in args.reports])
    counts = {c: sum(e["file"].split("/")[1] == c for e in entries) for c in CLASSES}
    print(
        f"{len(entries)} of {len(common)} training images rejected by all {len(runs)} runs: {counts}; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
