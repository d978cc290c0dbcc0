"""What a run derived when it started (not set by its config): image size, input normalisation, class counts.

Saved with every checkpoint (item ``run``) and as ``WORKDIR/run.json``, so the config
stays what the user wrote and evaluation reads the facts the run trained with. The
normalisation is the pretrained weights' own (a Keras ``.h5`` file normalises unlike
the variant's default), or the variant's for random init.
"""

from __future__ import annotations

import dataclasses
import json
import math
import reprlib

import numpy as np

from effnet_jax.labels import class_weights
from effnet_jax.output_files import write_text
from effnet_jax.runs.layout import Layout

# The image sizes a run record may hold: every variant's resolution (up to B7's 600) and what
# config.image_size accepts, with room; a larger one is a tampered file, not a run.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 2048


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
    def from_json(cls, blob: dict, where: str = "run record") -> RunRecord:
        """The record in ``blob``; a ValueError naming ``where`` and the key for a value a run never records.

        A downloaded run may hold anything: an image size far past any model's would make
        every later command allocate for it, a NaN mean or zero std would blank every image.
        """

        def numbers(key, ok, what):
            value = blob.get(key)
            if not isinstance(value, list) or not all(_is_number(v) and ok(v) for v in value):
                raise ValueError(f"{where}: {key}={reprlib.repr(value)}: expected a list of {what}")
            return value

        if not isinstance(blob, dict):
            raise ValueError(f"{where}: a {type(blob).__name__}, expected a JSON object")
        size = blob.get("image_size")
        if not (_is_number(size) and size == int(size) and MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE):
            raise ValueError(
                f"{where}: image_size={reprlib.repr(size)}: expected an integer from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}"
            )
        mean = numbers("mean", math.isfinite, "finite numbers")
        std = numbers("std", lambda v: math.isfinite(v) and v > 0, "positive finite numbers")
        if len(mean) not in (1, 3) or len(std) != len(mean):
            raise ValueError(f"{where}: mean and std: expected 1 or 3 values each, got {len(mean)} and {len(std)}")
        counts = numbers("train_class_counts", lambda v: v == int(v) and 0 <= v < 2**53, "counts (integers >= 0)")
        return cls(
            image_size=int(size),
            mean=tuple(float(v) for v in mean),
            std=tuple(float(v) for v in std),
            train_class_counts=tuple(int(n) for n in counts),
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
    def from_legacy_config(cls, config, variant, where: str = "config") -> RunRecord:
        """The record of a run saved before run records existed: its config carried the derived values.

        Checked as ``from_json`` checks a record (a ValueError naming ``where`` and the key): a
        downloaded checkpoint without its run record may carry any image size or normalisation.
        """
        blob = {
            "image_size": config.get("image_size") or variant.resolution,
            "mean": _as_list(config.get("model_mean") or variant.mean),
            "std": _as_list(config.get("model_std") or variant.std),
            "train_class_counts": _as_list(config.get("train_class_counts") or []),
        }
        return cls.from_json(blob, where)


def _as_list(value):
    """A config's list or tuple as a list; anything else as it is, for ``from_json`` to refuse."""
    return list(value) if isinstance(value, (list, tuple)) else value


def write(workdir: str, record: RunRecord) -> str:
    """Writes the run record into the run directory ``workdir``; returns its path."""
    path = Layout(workdir).run_record
    write_text(path, json.dumps(record.to_json(), indent=2) + "\n")
    return str(path)


def prior_of(class_counts, class_weights_spec) -> float:
    """The PNEUMONIA share of ``class_counts`` weighted by ``config.class_weights`` (``labels.class_weights``)."""
    weights = class_weights(class_weights_spec, list(class_counts))
    mass = np.asarray(class_counts, np.float64) * (1.0 if weights is None else np.asarray(weights, np.float64))
    return float(mass[1] / mass.sum())
