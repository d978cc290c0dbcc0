"""How many seeds a soup needs: every soup of N distinct-seed members from finished runs, scored on a split.

    python docs/experiments/scripts/soup_size.py --sizes=1,2,3,4 runs/pneumonia_s{0..7}
    python docs/experiments/scripts/soup_size.py --sizes=2 --recalibrate_batches=30 runs/pneumonia_s{0..7}
    python docs/experiments/scripts/soup_size.py --sizes=1,2,3 --combine=logits runs/pneumonia_s{0..5}

Each member is restored at its own best checkpoint (as effnet-soup takes it). For every
combination of members with distinct seeds (a random --max_per_size of them when there
are more), the weights and BatchNorm statistics are averaged in float64 as effnet-soup
does, and the soup is run over --split (default: the external set) with one compiled
model (--combine=logits: the members kept whole and their logits averaged, a seed ensemble
as effnet-soup --combine=logits makes it). Per soup size it prints the mean and sd of the AUC, of accuracy / specificity at the
operating rule (sensitivity >= 0.95) fitted on the same images, and of the rule fitted on a
random half and scored on the other (docs/experiments/scripts/summarise_sweep.py's), and how often the
accuracy reaches --target.

--recalibrate_batches=N also re-estimates each soup's BatchNorm statistics from N augmented
training batches (weights as averaged; effnet-adapt's exact population statistics over
those images; the records bn-recal-* were made at baae8b9 with the mean of per-batch
statistics, as SWA's BatchNorm update does) and prints both, before and after.
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np
from sklearn.metrics import roc_auc_score

from effnet_jax.metrics.classification import sensitivity_threshold
from effnet_jax.metrics.held_out import held_out_rule, rates


def average(variable_trees: list[dict]) -> dict:
    import jax

    def mean(*leaves):
        return (sum(np.asarray(x, np.float64) for x in leaves) / len(leaves)).astype(np.asarray(leaves[0]).dtype)

    return jax.tree.map(mean, *variable_trees)


def score(labels: np.ndarray, probs: np.ndarray) -> dict:
    threshold = sensitivity_threshold(labels, probs, 0.95)
    acc, sens, spec = rates(labels, probs, threshold)
    held = held_out_rule(labels, probs, np.random.default_rng(0))
    return {
        "auc": roc_auc_score(labels, probs),
        "acc": acc,
        "sens": sens,
        "spec": spec,
        "held_acc": held[0],
        "held_spec": held[2],
    }


def batchnorm_recalibrator(restored, batches: int, batch_size: int = 32):
    """fn(variables) -> variables with BatchNorm statistics re-estimated on ``batches`` augmented training batches.

    The statistics are effnet-adapt's (inference.batchnorm_stats): each layer's exact
    population mean and variance over all those images, earlier layers already re-estimated.
    """
    import jax

    from effnet_jax.data import create_split
    from effnet_jax.inference.batchnorm_stats import adapt_batch_stats

    image_size, mean, std = restored.input_spec
    data = iter(
        create_split(
            restored.config.data,
            "train",
            training=True,
            batch_size=batch_size,
            image_size=image_size,
            mean=mean,
            std=std,
            seed=0,
            shard_index=0,
            shard_count=1,
        )
    )
    try:
        images = np.concatenate([np.asarray(jax.device_get(next(data)["image"])) for _ in range(batches)])
    finally:
        getattr(data, "close", lambda: None)()
    model = restored.model()

    def recalibrate(variables):
        return {**variables, "batch_stats": adapt_batch_stats(model, variables, images, batch_size).batch_stats}

    return recalibrate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished effnet-train run directories (one seed each)")
    parser.add_argument("--sizes", default="1,2,3,4")
    parser.add_argument("--split", default="external")
    parser.add_argument("--max_per_size", type=int, default=80)
    parser.add_argument("--recalibrate_batches", type=int, default=0)
    parser.add_argument("--combine", choices=("weights", "logits"), default="weights")
    parser.add_argument("--target", type=float, default=0.93, help="accuracy target at the operating rule")
    parser.add_argument("--out", default="", help="also write every soup's scores here (JSON)")
    args = parser.parse_args()

    from effnet_jax import runs
    from effnet_jax.inference.evaluation import predict_split
    from effnet_jax.models.ensemble import LogitEnsemble, stack_members

    restored = {run: runs.open(run) for run in args.runs}
    first = restored[args.runs[0]]
    image_size, mean, std = first.input_spec
    seeds = {run: r.config.get("seed") for run, r in restored.items()}
    recalibrate = batchnorm_recalibrator(first, args.recalibrate_batches) if args.recalibrate_batches else None

    if args.combine == "logits" and args.recalibrate_batches:
        parser.error("--recalibrate_batches re-estimates a soup's statistics: not with --combine=logits")

    def evaluate(variables, size: int = 1) -> dict:
        result = predict_split(
            LogitEnsemble(first.model(), size) if size > 1 and args.combine == "logits" else first.model(),
            variables,
            first.config.data,
            args.split,
            image_size=image_size,
            mean=mean,
            std=std,
            batch_size=64,
            progress=False,
        )
        return score(result.labels, result.probs)

    print(f"{len(args.runs)} runs, seeds {sorted(seeds.values())}; split {args.split}; {args.combine} averaged")
    scores = {}
    for size in (int(s) for s in args.sizes.split(",")):
        combos = [c for c in itertools.combinations(args.runs, size) if len({seeds[r] for r in c}) == size]
        if len(combos) > args.max_per_size:
            pick = np.random.default_rng(size).choice(len(combos), args.max_per_size, replace=False)
            combos = [combos[i] for i in sorted(pick)]
        rows = []
        for combo in combos:
            members = [restored[r].variables() for r in combo]
            if args.combine == "logits" and size > 1:
                row = {"members": list(combo), "soup": evaluate(stack_members(members), size)}
            else:
                row = {"members": list(combo), "soup": evaluate(average(members))}
            if recalibrate:
                row["recalibrated"] = evaluate(recalibrate(average(members)))
            rows.append(row)
        scores[size] = rows
        for kind in ("soup", "recalibrated") if recalibrate else ("soup",):
            values = {k: np.array([r[kind][k] for r in rows]) for k in rows[0][kind]}
            reached = np.mean(values["acc"] >= args.target - 1e-9)
            print(
                f"size {size} ({len(rows)} soups{', BatchNorm recalibrated' if kind == 'recalibrated' else ''}): "
                f"AUC {values['auc'].mean():.4f} +- {values['auc'].std():.4f}; "
                f"acc / spec {values['acc'].mean():.4f} +- {values['acc'].std():.4f} / {values['spec'].mean():.4f}; "
                f"rule fitted on the other half {values['held_acc'].mean():.4f} / {values['held_spec'].mean():.4f}; "
                f"acc >= {args.target}: {reached:.2f}",
                flush=True,
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(scores, f, indent=1, default=float)


if __name__ == "__main__":
    main()
