"""The one evaluation pass: run a step over every batch of a split, keep the real rows.

The training loop's periodic validation (``evaluate``) and ``effnet-eval`` /
``effnet-predict`` (``inference.evaluation.predict_split``) both go through
``run_pass``, so padding, masks and row order are handled in one place.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable

import jax
import numpy as np

from effnet_jax.data import pipeline
from effnet_jax.metrics.classification import compute_metrics, sensitivity_threshold
from effnet_jax.train.parallel import Parallel


def run_pass(
    batches: Iterable[dict], step: Callable[[dict], dict], on_batch: Callable[[int], None] | None = None
) -> dict[str, np.ndarray]:
    """Concatenates ``step(batch)``'s per-example arrays over ``batches``.

    ``step`` returns a dict of ``(B, ...)`` arrays that includes ``mask``; rows whose
    mask is False (padding of the last batch) are dropped. ``on_batch`` gets the
    number of real rows of each batch (progress bars).
    """
    out = collections.defaultdict(list)
    for batch in batches:
        rows = step(batch)
        keep = np.asarray(rows.pop("mask"), bool)
        for key, value in rows.items():
            out[key].append(np.asarray(value)[keep])
        if on_batch is not None:
            on_batch(int(keep.sum()))
    return {key: np.concatenate(values) for key, values in out.items()}


def evaluate(
    par: Parallel, eval_step, variables, config, image_size: int, mean, std, split: str = "validation"
) -> dict:
    """Loss and classification metrics of ``variables`` on one full pass over ``split``."""
    per_process = par.check_batch_size(config.eval_batch_size, "config.eval_batch_size")
    ds = pipeline.create_split(
        config.data,
        split,
        training=False,
        batch_size=per_process,
        image_size=image_size,
        mean=mean,
        std=std,
        seed=config.seed,
    )

    def step(batch):
        out = par.fetch(eval_step(variables, par.put_batch({k: batch[k] for k in ("image", "label")})))
        # Masks and labels are gathered the same way as the outputs, so rows line up.
        host = (
            par.fetch(par.put_batch({"mask": batch["mask"], "label": batch["label"]}))
            if jax.process_count() > 1
            else {"mask": batch["mask"], "label": batch["label"]}
        )
        return {"prob": out["prob"], "loss": out["loss"], "label": host["label"], "mask": host["mask"]}

    rows = run_pass(ds, step)
    metrics = {"loss": float(np.mean(rows["loss"]))}
    metrics.update(compute_metrics(rows["label"], rows["prob"]))
    if 0 < rows["label"].sum():
        # The screening operating point on this split (config.operating_threshold).
        metrics["sensitivity_threshold"] = sensitivity_threshold(
            rows["label"], rows["prob"], float(config.get("operating_sensitivity", 0.95))
        )
    return metrics
