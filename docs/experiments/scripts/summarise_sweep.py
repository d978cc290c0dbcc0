"""The sweep table from the H200 sweep's saved probabilities (its script: `git show 7f58086:benchmarks/external_sweep.py`).

    python docs/experiments/scripts/summarise_sweep.py --probs=PROBS.npz

PROBS.npz holds every run's probabilities under probs/<recipe>/<seed>/<call>/<split> and the
labels under labels/<split> (the archive is kept outside git; results/sweep.jsonl holds the
table it gave, results/sweep_runs.jsonl each run's metrics).

Per recipe, over its runs (seeds, and repeats of a seed: GPU training is not bitwise
deterministic): external AUC mean and sd; accuracy and specificity at 0.5; at the
operating rule (the highest threshold keeping sensitivity >= 0.95 on the external set,
fitted on the same images, so optimistic); and the honest version of that rule, fitted
on a random half of the external set and scored on the other half (200 splits). Then
seed ensembles (mean probability) of the leading recipes.
"""

from __future__ import annotations

import argparse
import collections

import numpy as np
from sklearn.metrics import roc_auc_score

from effnet_jax.metrics.classification import sensitivity_threshold
from effnet_jax.metrics.held_out import held_out_rule, rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probs", required=True, help="the sweep's probabilities archive (.npz)")
    parser.add_argument("--ensembles", default="geo_photo,geo_photo_ema,geo")
    args = parser.parse_args()
    archive = np.load(args.probs)
    y_ext, y_val = archive["labels/external"].astype(int), archive["labels/validation"].astype(int)
    runs = collections.defaultdict(list)
    for key in archive.files:
        if key.startswith("probs/") and key.endswith("/external"):
            _, recipe, seed, call, _ = key.split("/")
            prefix = key[: -len("external")]
            runs[recipe].append({s: archive[prefix + s] for s in ("external", "external_flip", "validation")})
    rng = np.random.default_rng(0)
    rows = []
    for recipe, rs in runs.items():
        auc = [roc_auc_score(y_ext, r["external"]) for r in rs]
        half = np.mean([rates(y_ext, r["external"], 0.5) for r in rs], axis=0)
        fitted = np.mean([rates(y_ext, r["external"], sensitivity_threshold(y_ext, r["external"])) for r in rs], axis=0)
        held = np.mean([held_out_rule(y_ext, r["external"], rng) for r in rs], axis=0)
        val = np.mean([roc_auc_score(y_val, r["validation"]) for r in rs])
        rows.append((np.mean(auc), recipe, len(rs), np.std(auc), half, fitted, held, val))
    print(
        "| recipe | runs | external AUC | acc / spec at 0.5 | acc / spec at the sens-0.95 rule (fitted on it) "
        "| acc / sens / spec, rule fitted on the other half | validation AUC |"
    )
    print("|---|---|---|---|---|---|---|")
    for auc, recipe, n, sd, half, fitted, held, val in sorted(rows, key=lambda r: -r[0]):
        print(
            f"| `{recipe}` | {n} | {auc:.3f} ± {sd:.3f} | {half[0]:.3f} / {half[2]:.3f} | {fitted[0]:.3f} / "
            f"{fitted[2]:.3f} | {held[0]:.3f} / {held[1]:.3f} / {held[2]:.3f} | {val:.4f} |"
        )
    print()
    for recipe in args.ensembles.split(","):
        for view in ("external", "external_flip"):
            p = np.mean([r[view] for r in runs[recipe]], axis=0)
            t = sensitivity_threshold(y_ext, p)
            acc, sens, spec = rates(y_ext, p, t)
            held = held_out_rule(y_ext, p, rng)
            print(
                f"ensemble of {len(runs[recipe])} x {recipe}{' + flip TTA' if view.endswith('flip') else ''}: "
                f"AUC {roc_auc_score(y_ext, p):.4f}; rule t={t:.3f}: acc {acc:.3f} sens {sens:.3f} spec {spec:.3f}; "
                f"held-out rule: acc {held[0]:.3f} sens {held[1]:.3f} spec {held[2]:.3f}"
            )


if __name__ == "__main__":
    main()
