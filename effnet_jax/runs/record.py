"""What a run derived when it started (not set by its config): image size, input normalisation, class counts.

Saved with every checkpoint (item ``run``) and as ``WORKDIR/run.json``, so the config
stays what the user wrote and evaluation reads the facts the run trained with. The
normalisation is the pretrained weights' own (a Keras ``.h5`` file normalises unlike
the variant's default), or the variant's for random init.
"""

from __future__ import annotations

import dataclasses
import json

from etils import epath

RUN_FILE = "run.json"


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
    """Writes ``WORKDIR/run.json``; returns its path."""
    path = epath.Path(workdir) / RUN_FILE
    path.write_text(json.dumps(record.to_json(), indent=2) + "\n")
    return str(path)
