"""What a run derived when it started (not set by its config): image size, input normalisation, class counts.

Saved with every checkpoint (item ``run``) and as ``WORKDIR/run.json``, so the config
stays what the user wrote and evaluation reads the facts the run trained with. The
normalisation is the pretrained weights' own (a Keras ``.h5`` file normalises unlike
the variant's default), or the variant's for random init.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from etils import epath

from effnet_jax.labels import class_weights
from effnet_jax.runs.layout import Layout


@dataclasses.dataclass(frozen=True)
class RunRecord:
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_class_counts: tuple[int, ...]

    def to_json(self) -> dict:
        return {
            "image_size": int(self.image_size),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "train_class_counts": [int(n) for n in self.train_class_counts],
        }

    @classmethod
    def from_json(cls, blob: dict) -> RunRecord:
        return cls(
            image_size=int(blob["image_size"]),
            mean=tuple(float(v) for v in blob["mean"]),
            std=tuple(float(v) for v in blob["std"]),
            train_class_counts=tuple(int(n) for n in blob["train_class_counts"]),
        )

    def training_prior(self, config) -> float | None:
        """The PNEUMONIA share of what the run trained on, counting class weights and balancing.

        A classifier fitted to a class prior pi outputs posteriors for that prior; the threshold
        that weighs a missed PNEUMONIA and a missed NORMAL equally (best balanced accuracy, at
        any deployment prior) is pi itself: 0.5 after oversampling, undersampling or
        'balanced' class weights, about 0.74 for plain training on Kermany's 1:3 train split.
        None for a run that recorded no class counts (the caller counts its split again).
        """
        if config.data.get("balance", "none") != "none":
            return 0.5
        counts = self.train_class_counts or config.get("train_class_counts")
        if not counts:
            return None
        return prior_of(counts, config.get("class_weights", "none"))

    @classmethod
    def from_legacy_config(cls, config, variant) -> RunRecord:
        """The record of a run saved before run records existed: its config carried the derived values."""
        counts = config.get("train_class_counts")
        return cls(
            image_size=int(config.get("image_size") or variant.resolution),
            mean=tuple(config.get("model_mean") or variant.mean),
            std=tuple(config.get("model_std") or variant.std),
            train_class_counts=tuple(int(n) for n in counts) if counts else (),
        )


def write(workdir: str, record: RunRecord) -> str:
    """Writes the run record into the run directory ``workdir``; returns its path."""
    path = epath.Path(Layout(workdir).run_record)
    path.write_text(json.dumps(record.to_json(), indent=2) + "\n")
    return str(path)


def prior_of(class_counts, class_weights_spec) -> float:
    """The PNEUMONIA share of ``class_counts`` weighted by ``config.class_weights`` (``labels.class_weights``)."""
    weights = class_weights(class_weights_spec, list(class_counts))
    mass = np.asarray(class_counts, np.float64) * (1.0 if weights is None else np.asarray(weights, np.float64))
    return float(mass[1] / mass.sum())
