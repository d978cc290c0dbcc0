"""What each of issue #32's bars asks of the external set, counted in images, beside what runs have.

    effnet-eval --workdir=RUN --split=external              # for each run
    python docs/experiments/scripts/bar_images.py RUN [RUN ...]
    python docs/experiments/scripts/bar_images.py RUN [RUN ...] --record=results/bars.jsonl \
        --id=PREFIX --runs_name=TEXT --machine=TEXT        # append the rows as results records

A fraction of 314 X-rays hides how few images a bar is about. For the bars (accuracy >= 0.94,
AUC >= 0.985, specificity >= 0.90 at sensitivity >= 0.95) this counts, on the runs' external
set: the images (or, for the AUC, the pneumonia/normal pairs) the bar asks to get right, what
the runs get right (their mean; accuracy and specificity under the rule fitted on the other
half, as the bars are judged), and how many are missing. It also counts the normal X-rays
that every run calls pneumonia at its own operating threshold: errors no run moved.
"""

from __future__ import annotations

import argparse
import datetime
import math
import pathlib
import subprocess

import numpy as np
from sklearn.metrics import roc_auc_score
from summarise_runs import external_report  # a sibling script: run as python docs/experiments/scripts/...

from effnet_jax.metrics.held_out import held_out_rule

BARS = {"accuracy": 0.94, "auc": 0.985, "specificity": 0.90, "sensitivity": 0.95}


def read_run(workdir: pathlib.Path) -> dict:
    """Files, labels, P(PNEUMONIA) and operating threshold of the run's latest external report (no TTA)."""
    report, rows = external_report(workdir)
    return {
        "files": [r["file"] for r in rows],
        "labels": np.asarray([int(r["label"]) for r in rows]),
        "probs": np.asarray([float(r["prob_pneumonia"]) for r in rows]),
        "threshold": float(report["operating_threshold"]),
    }


def at_least(fraction: float, n: int) -> int:
    """The fewest of ``n`` that make a rate of at least ``fraction`` (rounding error forgiven)."""
    return math.ceil(fraction * n - 1e-9)


def bar_counts(runs: list[dict], bars: dict = BARS) -> list[dict]:
    """One row per bar: what it asks, what the runs have (mean), what is missing (0 when met)."""
    labels = runs[0]["labels"]
    for run in runs[1:]:
        if not np.array_equal(run["labels"], labels) or run["files"] != runs[0]["files"]:
            raise ValueError("the runs were evaluated on different images; count bars on one external set")
    n, positives = len(labels), int(labels.sum())
    negatives = n - positives
    pairs = positives * negatives
    held = [
        held_out_rule(r["labels"], r["probs"], np.random.default_rng(0), min_sensitivity=bars["sensitivity"])
        for r in runs
    ]
    have_correct = float(np.mean([h[0] for h in held])) * n
    have_normals = float(np.mean([h[2] for h in held])) * negatives
    have_pneumonias = float(np.mean([h[1] for h in held])) * positives
    wrong_pairs = float(np.mean([(1 - roc_auc_score(r["labels"], r["probs"])) * pairs for r in runs]))
    normal = labels == 0
    called = np.all([r["probs"] >= r["threshold"] for r in runs], axis=0)
    shared = int(np.sum(called & normal))
    # What each bar asks, in images (or pairs for the AUC).
    right = at_least(bars["accuracy"], n)
    found = at_least(bars["sensitivity"], positives)
    cleared = at_least(bars["specificity"], negatives)
    allowed_pairs = math.floor((1 - bars["auc"]) * pairs + 1e-9)
    allowed_errors, allowed_missed = n - right, positives - found
    allowed_false = allowed_errors - allowed_missed  # normals called pneumonia, the misses spent
    short = lambda missing: round(max(0.0, missing), 1)  # noqa: E731
    return [
        {
            "bar": f"accuracy >= {bars['accuracy']}",
            "asks": f"{right} of {n} X-rays right (at most {allowed_errors} wrong)",
            "have": round(have_correct, 1),
            "short": short(right - have_correct),
        },
        {
            "bar": f"sensitivity >= {bars['sensitivity']}",
            "asks": f"{found} of {positives} pneumonias found (at most {allowed_missed} missed)",
            "have": round(have_pneumonias, 1),
            "short": short(found - have_pneumonias),
        },
        {
            "bar": f"specificity >= {bars['specificity']} at that sensitivity",
            "asks": f"{cleared} of {negatives} normals cleared (at most {negatives - cleared} called pneumonia)",
            "have": round(have_normals, 1),
            "short": short(cleared - have_normals),
        },
        {
            "bar": f"accuracy >= {bars['accuracy']} with at most {allowed_missed} pneumonias missed",
            "asks": f"at most {allowed_false} normals called pneumonia",
            "have": round(negatives - have_normals, 1),
            "short": short(negatives - have_normals - allowed_false),
        },
        {
            "bar": f"AUC >= {bars['auc']}",
            "asks": f"at most {allowed_pairs} of {pairs} (pneumonia, normal) pairs ranked the wrong way",
            "have": round(wrong_pairs, 1),
            "short": short(wrong_pairs - allowed_pairs),
        },
        {
            "bar": "normals every run calls pneumonia at its own operating threshold",
            "asks": "(errors no run moved)",
            "have": shared,
            "short": None,
        },
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", type=pathlib.Path)
    parser.add_argument("--record", type=pathlib.Path, help="append one record per bar to this results file")
    parser.add_argument("--id", default="bars", help="record ids: ID-1, ID-2, ...")
    parser.add_argument("--runs_name", default="", help="what the runs are, for the records")
    parser.add_argument("--machine", default="", help="where the runs were trained, for the records")
    args = parser.parse_args()
    runs = [read_run(w) for w in args.workdirs]
    rows = bar_counts(runs)
    for row in rows:
        short = "" if row["short"] is None else f"; short by {row['short']}"
        print(f"{row['bar']}: asks {row['asks']}; the runs have {row['have']}{short}")
    if args.record:
        from effnet_jax.reporting.results_tables import append_new_record

        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        command = "python docs/experiments/scripts/bar_images.py " + " ".join(str(w) for w in args.workdirs)
        for i, row in enumerate(rows, 1):
            record = {"id": f"{args.id}-{i}", "tables": ["bars"], "runs_name": args.runs_name, "runs": len(runs)}
            record.update(row)
            record.update(
                command=command,
                config="configs/pneumonia.py",
                commit=commit,
                machine=args.machine,
                date=datetime.date.today().isoformat(),
            )
            append_new_record(str(args.record), record)


if __name__ == "__main__":
    main()
