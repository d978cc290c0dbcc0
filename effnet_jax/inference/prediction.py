"""Predict pneumonia on image files with a trained run, optionally writing Grad-CAM overlays.

Images go through the same steps as the evaluation pipeline (storage
normalisation, grayscale decode, centre crop and resize, mean/std), taken from
``effnet_jax.data``, so a file scores the same here as it would in the test split. A
temperature fitted at the restored checkpoint (``WORKDIR/calibration.json``) is applied to
every probability, and rule-derived thresholds go through the same map (labels unchanged).
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
from collections.abc import Iterator, Sequence

import numpy as np

from effnet_jax.data import imaging, transforms
from effnet_jax.inference.evaluation import input_spec, make_predict_fn
from effnet_jax.inference.gradcam import make_gradcam, save_overlay
from effnet_jax.inference.restore import restore_for_inference
from effnet_jax.inference.thresholds import resolve_threshold
from effnet_jax.labels import CLASS_NAMES, positive_probability
from effnet_jax.reporting import calibration as calibration_lib


class ImageReadError(ValueError):
    """An input file that could not be read as an image; the message names the file."""


@dataclasses.dataclass
class Preprocessor:
    """File -> (normalised model input ``(S, S, 3)`` float32, grayscale PIL image for display)."""

    image_size: int
    mean: tuple
    std: tuple
    center_crop: float = 1.0
    max_size: int = 512  # the data set's storage size: decode as the pipeline's stored copy would be

    def __call__(self, path: str):
        try:
            # A FIFO or device would block open() or read() forever: only regular files are read.
            if not stat.S_ISREG(os.stat(path).st_mode):
                raise ImageReadError(f"{path}: not a regular file (a FIFO, device or folder); skipped")
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ImageReadError(f"{path}: cannot read file ({type(e).__name__}: {e.strerror or e})") from e
        try:
            stored, _ = imaging.load_for_storage(data, path, self.max_size)
        except imaging.BadImageError as e:
            raise ImageReadError(str(e)) from e
        gray = transforms.decode_gray(stored, math.ceil(self.image_size / self.center_crop))
        image = transforms.Normalizer(self.mean, self.std)(
            transforms.center_resize(gray, self.image_size, self.center_crop)
        )
        return image, transforms.decode_gray(stored)


def _overlay_names(paths: Sequence[str]) -> list[str]:
    """One PNG name per input; inputs that share a file name get their position appended."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    seen: dict[str, int] = {}
    for s in stems:
        seen[s] = seen.get(s, 0) + 1
    return [f"{s}_{i}.gradcam.png" if seen[s] > 1 else f"{s}.gradcam.png" for i, s in enumerate(stems)]


class Predictor:
    """A restored run ready to score images: ``predict(paths)`` yields one dict per path, in order."""

    def __init__(
        self,
        workdir: str,
        checkpoint: str | int = "best",
        threshold: float | str | None = None,
        batch_size: int = 8,
        use_ema: bool = True,
    ):
        restored = restore_for_inference(workdir, checkpoint, use_ema=use_ema)
        self.config, self.model, self.variables, self.step = (
            restored.config,
            restored.model,
            restored.variables,
            restored.step,
        )
        size, mean, std = input_spec(restored)
        data = self.config.data
        self.preprocess = Preprocessor(
            size, mean, std, float(data.get("center_crop", 1.0) or 1.0), int(data.get("max_size", 512) or 512)
        )
        self.temperature, self.calibration = calibration_lib.temperature_for_step(workdir, self.step)
        self.threshold, self.threshold_source = resolve_threshold(
            workdir, self.step, threshold, self.config, restored.run.train_class_counts
        )
        if self.threshold_source != "flag":
            # Derived on uncalibrated probabilities: mapped like them, so no label changes. A
            # number given on the command line is meant for the probabilities printed.
            self.threshold = calibration_lib.calibrate_threshold(self.threshold, self.temperature)
        self.batch_size = max(1, int(batch_size))
        self._predict = None
        self._gradcam = None

    def _scores(self, images: np.ndarray, with_gradcam: bool):
        # Pad every batch to batch_size so that one compiled program serves all of them.
        n = images.shape[0]
        padded = np.zeros((self.batch_size,) + images.shape[1:], np.float32)
        padded[:n] = images
        if with_gradcam:
            if self._gradcam is None:
                self._gradcam = make_gradcam(self.model)
            out = self._gradcam(self.variables, padded)
            probs = np.asarray(positive_probability(out["logits"]), np.float64)[:n]
            return calibration_lib.calibrate_probs(probs, self.temperature), np.asarray(out["heatmap"])[:n]
        if self._predict is None:
            self._predict = make_predict_fn(self.model)
        probs = np.asarray(self._predict(self.variables, padded), np.float64)[:n]
        return calibration_lib.calibrate_probs(probs, self.temperature), None

    def predict(self, paths: Sequence[str], gradcam_dir: str | None = None) -> Iterator[dict]:
        """Yields ``{'file', 'prob_pneumonia', 'label', 'threshold', 'temperature'[, 'gradcam']}`` or ``{'file', 'error'}``.

        ``prob_pneumonia`` is calibrated when ``temperature`` is not 1.
        """
        names = _overlay_names(paths) if gradcam_dir else None
        if gradcam_dir:
            os.makedirs(gradcam_dir, exist_ok=True)
        for start in range(0, len(paths), self.batch_size):
            chunk = list(range(start, min(start + self.batch_size, len(paths))))
            loaded, errors = {}, {}
            for i in chunk:
                try:
                    loaded[i] = self.preprocess(paths[i])
                except ImageReadError as e:
                    errors[i] = str(e)
            probs, heatmaps = [], None
            if loaded:
                probs, heatmaps = self._scores(np.stack([loaded[i][0] for i in loaded]), gradcam_dir is not None)
            scored = {i: k for k, i in enumerate(loaded)}
            for i in chunk:
                if i in errors:
                    yield {"file": paths[i], "error": errors[i]}
                    continue
                p = float(probs[scored[i]])
                record = {
                    "file": paths[i],
                    "prob_pneumonia": p,
                    "label": CLASS_NAMES[int(p >= self.threshold)],
                    "threshold": self.threshold,
                    "temperature": self.temperature,
                }
                if gradcam_dir:
                    record["gradcam"] = save_overlay(
                        loaded[i][1], heatmaps[scored[i]], os.path.join(gradcam_dir, names[i])
                    )
                yield record
