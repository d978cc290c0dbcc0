"""effnet-adapt measured: external scores of a run and of its adapted copies, from effnet-eval's predictions.

    python docs/experiments/scripts/adapt_scores.py RUN/eval/external_STEP NEWRUN/eval/external_STEP ...
    python docs/experiments/scripts/adapt_scores.py --half=HALF_A.txt --on_a=A/eval/external_S \
        --on_b=B/eval/external_S RUN/eval/external_STEP

For each effnet-eval folder (its predictions.csv and metrics.json): the AUC; accuracy,
sensitivity and specificity at the run's operating threshold (for an adapted run, its
source's); at the rule (sensitivity >= 0.95) fitted on the same images; and that rule fitted
on a random half and scored on the other (200 splits, ``effnet_jax.metrics.held_out``).

--half: a fixed split of the external set, HALF_A.txt listing half A's files (relative to the
external folder, one a line; the rest is half B), with the runs adapted on A's images alone
(--on_a) and on B's alone (--on_b). Then the honest number: the model adapted on one half,
its rule fitted on that half's labels, scored on the other half it never saw, averaged over
both directions; beside it the unadapted run (the positional folder) on the same split.
"""

from __future__ import annotations

import argparse
import csv
import json
import os

import numpy as np
from sklearn.metrics import roc_auc_score

from effnet_jax.metrics.classification import sensitivity_threshold
from effnet_jax.metrics.held_out import held_out_rule, rates


def read(eval_dir: str) -> tuple[list[str], np.ndarray, np.ndarray, float]:
    """(files, labels 0/1, P(PNEUMONIA), operating threshold) of one effnet-eval folder."""
    with open(os.path.join(eval_dir, "predictions.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(eval_dir, "metrics.json")) as f:
        report = json.load(f)
    labels = np.array([int(r["label"] in ("1", "PNEUMONIA")) for r in rows])
    probs = np.array([float(r["prob_pneumonia"]) for r in rows])
    return [r["file"] for r in rows], labels, probs, float(report["metrics"]["operating"]["threshold"])


def scores(eval_dir: str) -> dict:
    files, labels, probs, operating = read(eval_dir)
    fitted = sensitivity_threshold(labels, probs, 0.95)
    held = held_out_rule(labels, probs, np.random.default_rng(0))
    at = lambda t: dict(
        zip(("accuracy", "sensitivity", "specificity"), (round(float(v), 3) for v in rates(labels, probs, t)))
    )  # noqa: E731
    return {
        "images": len(files),
        "auc": round(float(roc_auc_score(labels, probs)), 3),
        "operating": {"threshold": round(operating, 3), **at(operating)},
        "fitted": {"threshold": round(fitted, 3), **at(fitted)},
        "heldout": dict(zip(("accuracy", "sensitivity", "specificity"), (round(float(v), 3) for v in held))),
    }


def across_halves(half_a: set[str], on_a: str, on_b: str) -> dict:
    """Adapted on one half, rule fitted on that half, scored on the other; the mean of both directions."""
    out, aucs = [], []
    for adapted_on, fit_half in ((on_a, True), (on_b, False)):
        files, labels, probs, _ = read(adapted_on)
        in_a = np.array([f in half_a for f in files])
        fit = in_a if fit_half else ~in_a
        t = sensitivity_threshold(labels[fit], probs[fit], 0.95)
        out.append(rates(labels[~fit], probs[~fit], t))
        aucs.append(roc_auc_score(labels[~fit], probs[~fit]))
    rounded = (round(float(v), 3) for v in np.mean(out, axis=0))
    return {
        "auc_judged_half": round(float(np.mean(aucs)), 3),
        **dict(zip(("accuracy", "sensitivity", "specificity"), rounded)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evals", nargs="+", help="effnet-eval output folders (eval/external_<step>)")
    parser.add_argument("--half", default="", help="a file listing half A of the external set")
    parser.add_argument("--on_a", default="", help="effnet-eval folder of the run adapted on half A")
    parser.add_argument("--on_b", default="", help="effnet-eval folder of the run adapted on half B")
    args = parser.parse_args()
    for eval_dir in args.evals:
        print(json.dumps({"eval": eval_dir, **scores(eval_dir)}))
    if args.half:
        with open(args.half) as f:
            half_a = {line.strip() for line in f if line.strip()}
        print(json.dumps({"adapted on one half, judged on the other": across_halves(half_a, args.on_a, args.on_b)}))
        source = args.evals[0]
        print(json.dumps({"unadapted, same halves": across_halves(half_a, source, source), "eval": source}))


if __name__ == "__main__":
    main()
