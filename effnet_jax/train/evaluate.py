"""The one evaluation pass: run a step over every batch of a split, keep the real rows.

The training loop's periodic validation (``evaluate``) and ``effnet-eval`` /
``effnet-predict`` (``inference.evaluation.predict_split``) both go through
``data.pipeline.run_pass``, so padding, masks and row order are handled in one place.
"""

from __future__ import annotations

import jax
import numpy as np

from effnet_jax.data import pipeline
from effnet_jax.data.pipeline import run_pass
from effnet_jax.labels import class_names
from effnet_jax.metrics import multiclass
from effnet_jax.metrics.classification import compute_metrics, sensitivity_threshold
from effnet_jax.train.parallel import Parallel


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
    if rows["prob"].ndim == 2:
        # More than two classes: one-vs-rest per class and their macro averages (no threshold).
        found = multiclass.compute_metrics(rows["label"], rows["prob"], class_names(config.data))
        metrics.update(multiclass.scalars(found))
        metrics["confusion_matrix"] = found["confusion_matrix"]
        return metrics
    metrics.update(compute_metrics(rows["label"], rows["prob"]))
    if 0 < rows["label"].sum():
        # The screening operating point on this split (config.operating_threshold).
        metrics["sensitivity_threshold"] = sensitivity_threshold(
            rows["label"], rows["prob"], float(config.get("operating_sensitivity", 0.95))
        )
    return metrics
