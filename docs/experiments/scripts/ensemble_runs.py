"""The logit-average ensemble of runs of any architectures, scored on the external set from their eval reports.

    effnet-eval --workdir=runs/lite0 --split=external
    effnet-eval --workdir=runs/lite1 --split=external
    python docs/experiments/scripts/ensemble_runs.py runs/lite0 runs/lite1
    python docs/experiments/scripts/ensemble_runs.py RUN/eval/external_250 RUN/eval/external_292

effnet-soup ensembles the seeds of one model; models of different variants or image sizes
(Lite0 at 224 px with Lite1 at 240 px) can be ensembled from their predictions instead. Per
run it reads the latest external report's predictions.csv (summarise_runs.py's reader),
checks that every run scored the same files with the same labels, averages the members'
logits, and prints each member and the ensemble: AUC, the sensitivity-0.95 rule fitted on
a random half and scored on the other (200 splits), and at t=0.5. An argument that is an
effnet-eval report folder (holding predictions.csv) is read as it is: checkpoints of one
run at several steps ensembled (a snapshot ensemble).
"""

from __future__ import annotations

import argparse
import csv
import pathlib

import numpy as np
from sklearn.metrics import roc_auc_score

from effnet_jax.metrics.held_out import held_out_rule, rates


def read_predictions(workdir: pathlib.Path) -> tuple[list, np.ndarray, np.ndarray]:
    """(files, labels, probabilities) of the run's latest external report (or of the report folder given), sorted by file."""
    reports = (
        [workdir / "predictions.csv"]
        if (workdir / "predictions.csv").is_file()
        else sorted(
            (p for p in workdir.glob("eval/external_*/predictions.csv") if "_tta-" not in p.parent.name),
            key=lambda p: p.stat().st_mtime,
        )
    )
    if not reports:
        raise SystemExit(f"{workdir}: no eval/external_*/predictions.csv; run effnet-eval --split=external first")
    with open(reports[-1], newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["file"])
    files = [pathlib.Path(r["file"]).name for r in rows]
    return files, np.asarray([int(r["label"]) for r in rows]), np.asarray([float(r["prob_pneumonia"]) for r in rows])


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)  # predictions.csv keeps 6 decimals
    return np.log(p) - np.log1p(-p)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", type=pathlib.Path)
    args = parser.parse_args()
    # Keyed by the path as given: members of two runs share names like members/seed_0.
    if len(set(args.workdirs)) < len(args.workdirs):
        raise SystemExit("a run is named twice; each member counts once")
    members = {str(w): read_predictions(w) for w in args.workdirs}
    files, labels, _ = next(iter(members.values()))
    for name, (f, y, _) in members.items():
        if f != files or not np.array_equal(y, labels):
            raise SystemExit(f"{name}: scored other files or labels than {args.workdirs[0]}")
    mean = np.mean([logit(p) for _, _, p in members.values()], axis=0)
    scored = {**{name: p for name, (_, _, p) in members.items()}, "ensemble": 1 / (1 + np.exp(-mean))}
    fmt = lambda v: " / ".join(f"{x:.3f}" for x in v)  # noqa: E731
    print(f"{len(labels)} external images ({int(labels.sum())} PNEUMONIA)")
    for name, probs in scored.items():
        print(
            f"{name}: AUC {roc_auc_score(labels, probs):.4f}, held-out rule acc/sens/spec "
            f"{fmt(held_out_rule(labels, probs, np.random.default_rng(0)))}, t=0.5 {fmt(rates(labels, probs, 0.5))}"
        )


if __name__ == "__main__":
    main()
