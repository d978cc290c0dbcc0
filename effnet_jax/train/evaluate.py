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
from effnet_jax.metrics.logged import split_metrics
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
    return split_metrics(
        rows["label"],
        rows["prob"],
        float(np.mean(rows["loss"])),
        class_names(config.data),
        float(config.get("operating_sensitivity", 0.95)),
    )
