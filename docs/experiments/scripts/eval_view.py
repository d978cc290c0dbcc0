"""Does the evaluation view match what training showed? Finished runs scored at other centre crops and input sizes.

    python docs/experiments/scripts/eval_view.py --crops=1,0.9,0.85 --sizes=224,256 runs/pneumonia_s{0..5}

Training zooms in (data.augment.scale_min: a crop of 55-100% of the area, 87% of the side
on average) while evaluation shows the whole frame (data.center_crop=1), so the lungs look
smaller at test time than the model mostly saw them: the train/test resolution discrepancy
of FixRes (Touvron et al. 2019). Either a centre crop or a larger input size (the network
pools globally, so any size runs) makes them look larger again. Each run is restored at its
best checkpoint and scored on --split for every (crop, size); per setting the script prints
the mean over runs of the AUC, of accuracy / specificity at the operating rule (sensitivity
>= 0.95) fitted on the same images, and of that rule fitted on a random half and scored on
the other (docs/experiments/scripts/summarise_sweep.py's), with each run's AUC.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
from soup_size import score

from effnet_jax.host_memory import keep_freed_host_memory

keep_freed_host_memory()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished effnet-train run directories")
    parser.add_argument("--crops", default="1,0.9,0.85", help="data.center_crop values (fraction of each side)")
    parser.add_argument("--sizes", default="", help="input sizes (default: each run's own)")
    parser.add_argument("--split", default="external")
    args = parser.parse_args()

    from effnet_jax import runs
    from effnet_jax.inference.evaluation import predict_split

    crops = [float(c) for c in args.crops.split(",")]
    results = {}
    for run in args.runs:
        restored = runs.open(run)
        own_size, mean, std = restored.input_spec
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [own_size]
        for crop, size in itertools.product(crops, sizes):
            data = restored.config.data.copy_and_resolve_references()
            data.center_crop = crop
            result = predict_split(
                restored.model(),
                restored.variables(),
                data,
                args.split,
                image_size=size,
                mean=mean,
                std=std,
                batch_size=32,
                progress=False,
            )
            results.setdefault((crop, size), []).append(score(result.labels, result.probs))
            print(f"{run} crop {crop:g} size {size}: AUC {results[(crop, size)][-1]['auc']:.4f}", flush=True)
    print(f"{len(args.runs)} runs; split {args.split}")
    for (crop, size), rows in results.items():
        values = {k: np.array([r[k] for r in rows]) for k in rows[0]}
        print(
            f"crop {crop:g} size {size}: AUC {values['auc'].mean():.4f} +- {values['auc'].std():.4f} "
            f"({', '.join(f'{a:.3f}' for a in values['auc'])}); "
            f"acc / spec {values['acc'].mean():.4f} / {values['spec'].mean():.4f}; "
            f"rule fitted on the other half {values['held_acc'].mean():.4f} / {values['held_spec'].mean():.4f}"
        )


if __name__ == "__main__":
    main()
