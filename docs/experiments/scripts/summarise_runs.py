"""Mean and sd over effnet-train runs evaluated with effnet-eval (the rows of docs/experiments/README.md).

    effnet-train --config=configs/pneumonia.py --workdir=runs/pneumonia_s$S --config.seed=$S   # S = 0, 1, 2
    effnet-eval --workdir=runs/pneumonia_s$S --split=external
    python docs/experiments/scripts/summarise_runs.py runs/pneumonia_s0 runs/pneumonia_s1 runs/pneumonia_s2

Per run it reads the best checkpoint's external report (eval/external_STEP/metrics.json and
predictions.csv) and the run's metrics.jsonl; it prints each run and the mean +- sd of the
external AUC, of accuracy / sensitivity / specificity at the operating threshold (fitted on
the same images, so optimistic) and with the rule fitted on a random half and scored on the
other half (200 splits, as docs/experiments/scripts/summarise_sweep.py does), at t=0.5, the validation AUC
at the chosen step, and the wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib

import numpy as np

from effnet_jax.metrics.held_out import held_out_rule, rates


def external_report(workdir: pathlib.Path) -> tuple[dict, list[dict]]:
    """(metrics.json, rows of predictions.csv) of the run's latest external report without TTA."""
    reports = sorted(
        (p for p in workdir.glob("eval/external_*/metrics.json") if "_tta-" not in p.parent.name),
        key=lambda p: p.stat().st_mtime,
    )
    if not reports:
        raise SystemExit(f"{workdir}: no eval/external_*/metrics.json; run effnet-eval --split=external first")
    with open(reports[-1].parent / "predictions.csv", newline="") as f:
        return json.loads(reports[-1].read_text()), list(csv.DictReader(f))


def read_run(workdir: pathlib.Path) -> dict:
    report, rows = external_report(workdir)
    labels = np.asarray([int(r["label"]) for r in rows])
    probs = np.asarray([float(r["prob_pneumonia"]) for r in rows])
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    step = report["step"]
    val = [r for r in records if r["split"] == "validation" and r["step"] == step]
    wall = [r["wall_seconds"] for r in records if r["split"] == "run"]
    op = report["metrics"]["operating"]
    return dict(
        run=workdir.name,
        step=step,
        auc=op["auc"],
        operating=(op["accuracy"], op["recall"], op["specificity"]),
        threshold=report["operating_threshold"],
        at_half=rates(labels, probs, 0.5),
        held_out=held_out_rule(labels, probs, np.random.default_rng(0)),
        val_auc=val[-1]["auc"] if val else float("nan"),
        wall_min=wall[-1] / 60 if wall else float("nan"),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", type=pathlib.Path)
    args = parser.parse_args()
    runs = [read_run(w) for w in args.workdirs]
    fmt = lambda v: " / ".join(f"{x:.3f}" for x in v)
    for r in runs:
        print(
            f"{r['run']}: step {r['step']}, AUC {r['auc']:.4f}, operating t={r['threshold']:.3f} acc/sens/spec "
            f"{fmt(r['operating'])}, held-out rule {fmt(r['held_out'])}, t=0.5 {fmt(r['at_half'])}, "
            f"val AUC {r['val_auc']:.4f}, {r['wall_min']:.1f} min"
        )
    stat = lambda key: (np.mean([r[key] for r in runs], axis=0), np.std([r[key] for r in runs], axis=0))
    for key in ("auc", "operating", "held_out", "at_half", "val_auc", "wall_min"):
        mean, sd = stat(key)
        print(f"{key}: mean {np.round(mean, 4).tolist()} sd {np.round(sd, 4).tolist()}")


if __name__ == "__main__":
    main()
