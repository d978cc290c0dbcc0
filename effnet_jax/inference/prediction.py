"""Predict pneumonia on images with a trained run, optionally writing Grad-CAM overlays.

    predictor = Predictor("runs/pneumonia")
    for record in predictor.predict(["xray.jpeg", uint8_array, pil_image]):
        print(record["prob_pneumonia"], record["label"])

Inputs are file paths, numpy ``uint8`` arrays (H x W grayscale or H x W x 3 RGB) or PIL
images. Every input goes through the same steps as the evaluation pipeline (storage
normalisation, grayscale decode, centre crop and resize, mean/std), taken from
``effnet_jax.data``, so an image scores the same here as it would in the test split, and
an array or PIL image scores exactly as the same pixels saved as a PNG file. A
temperature fitted at the restored checkpoint (``WORKDIR/calibration.json``) is applied to
every probability, and rule-derived thresholds go through the same map (labels unchanged).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import os
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

from effnet_jax import limits, runs
from effnet_jax.data import imaging, transforms
from effnet_jax.inference.evaluation import make_predict_fn
from effnet_jax.inference.gradcam import make_gradcam, save_overlay, save_panel, weighted_by_probability
from effnet_jax.inference.thresholds import resolve_threshold
from effnet_jax.labels import CLASS_NAMES, class_names, class_probabilities, class_record
from effnet_jax.metrics import calibration as calibration_lib
from effnet_jax.output_files import UnsafeOutputError, file_ids, input_problem, short_hash, slug
from effnet_jax.runs import Run

ImageInput = str | os.PathLike | np.ndarray | Image.Image


class ImageReadError(ValueError):
    """An input file that could not be read as an image; the message names the file."""


@dataclasses.dataclass
class Preprocessor:
    """File -> (normalised model input ``(S, S, 3)`` float32, the file as a grayscale PIL image at its own size)."""

    image_size: int
    mean: tuple
    std: tuple
    center_crop: float = 1.0
    max_size: int = 512  # the data set's storage size: decode as the pipeline's stored copy would be
    equalize: str = "none"  # data.equalize: grey levels of the model view, as training saw them

    @classmethod
    def for_run(cls, run: Run) -> Preprocessor:
        """The run's own: its image size and normalisation (run record), centre crop, storage size and levels (config)."""
        size, mean, std = run.input_spec
        data = run.config.data
        return cls(
            size,
            mean,
            std,
            float(data.get("center_crop", 1.0) or 1.0),
            int(data.get("max_size", 512) or 512),
            transforms.equalize_mode(data),
        )

    def __call__(self, item: ImageInput, name: str | None = None):
        """``item``: a file path, a uint8 array (H x W or H x W x 3) or a PIL image; ``name`` labels errors."""
        if isinstance(item, (str, os.PathLike)):
            path = os.fspath(item)
            data = _read_file(path)
        else:
            path = name or "<image>"
            data = _png_bytes(item, path)
        try:
            original = imaging.decode_file(data, path)
            # The model sees the stored copy, as training did; people see the file at its own size.
            stored, _ = imaging.store_gray(original, self.max_size, data, path)
        except imaging.BadImageError as e:
            raise ImageReadError(str(e)) from e
        gray = transforms.decode_gray(stored, math.ceil(self.image_size / self.center_crop))
        view = transforms.center_resize(gray, self.image_size, self.center_crop)
        image = transforms.Normalizer(self.mean, self.std)(transforms.equalize(view, self.equalize))
        return image, original


def _read_file(path: str) -> bytes:
    try:
        # A FIFO or device would block open() or read() forever, and a file of GBs (sparse costs
        # nothing) would be read whole: both are refused before reading, as by the exported model.
        return limits.read_regular_file(path, limits.MAX_IMAGE_FILE_BYTES)
    except limits.BudgetError as e:
        raise ImageReadError(f"{e}; skipped") from None
    except OSError as e:
        raise ImageReadError(f"{path}: cannot read file ({type(e).__name__}: {e.strerror or e})") from e


def _png_bytes(item, name: str) -> bytes:
    """An in-memory image as PNG bytes: lossless, so it then takes exactly a PNG file's path."""
    if isinstance(item, np.ndarray):
        rgb = item.ndim == 3 and item.shape[2] == 3
        if item.dtype != np.uint8 or not (item.ndim == 2 or rgb) or 0 in item.shape:
            raise ImageReadError(
                f"{name}: expected a uint8 array of H x W or H x W x 3, got {item.dtype} of shape {item.shape}"
            )
        item = Image.fromarray(np.ascontiguousarray(item), "RGB" if rgb else "L")
    elif not isinstance(item, Image.Image):
        raise ImageReadError(f"{name}: expected a file path, a numpy array or a PIL image, got {type(item).__name__}")
    out = io.BytesIO()
    try:
        item.save(out, format="PNG")
    except (OSError, ValueError) as e:
        raise ImageReadError(f"{name}: cannot encode PIL image of mode {item.mode} ({e})") from e
    return out.getvalue()


def _input_names(items: Sequence) -> list[str]:
    """The ``file`` of each record: a path as given, else ``<array N>`` / ``<image N>`` by position."""
    names = []
    for i, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            names.append(os.fspath(item))
        else:
            names.append(f"<{'array' if isinstance(item, np.ndarray) else 'image'} {i}>")
    return names


def _overlay_names(paths: Sequence[str]) -> list[str]:
    """One PNG name per input, distinct within the run (case folded, for case-insensitive disks).

    Names are derived, never joined from the input: the file's stem reduced to letters,
    digits, ``._-``. Inputs whose stems collide each get a short hash of their full path
    (and their position, should one path come twice), so no overlay replaces another.
    """
    stems = [slug(os.path.splitext(os.path.basename(p))[0]) for p in paths]
    count: dict[str, int] = {}
    for s in stems:
        count[s.lower()] = count.get(s.lower(), 0) + 1
    names = [s if count[s.lower()] == 1 else f"{s}-{short_hash(p)}" for s, p in zip(stems, paths)]
    repeated = collections.Counter(n.lower() for n in names)
    taken: set[str] = set()
    unique = []
    for i, name in enumerate(names):
        if name.lower() in taken or repeated[name.lower()] > 1:
            name = f"{name}-{i}"
        taken.add(name.lower())
        unique.append(f"{name}.gradcam.png")
    return unique


def _refuse_overwriting_inputs(items: Sequence, names: Sequence[str], gradcam_dir: str) -> None:
    """UnsafeOutputError when an overlay or panel name is one of the input images (``--gradcam`` = an input folder)."""
    inputs = file_ids(os.fspath(item) for item in items if isinstance(item, (str, os.PathLike)))
    for name in names:
        for out_name in (name, _panel_name(name), f"{name}.tmp", f"{_panel_name(name)}.tmp"):
            problem = input_problem(os.path.join(gradcam_dir, out_name), inputs)
            if problem:
                raise UnsafeOutputError(problem)


def _panel_name(overlay_name: str) -> str:
    """The panel's name beside an overlay ``X.gradcam.png``: ``X.gradcam_panel.png``.

    Only the suffix changes: a stem that itself holds ``.gradcam.png`` (file ``k.gradcam.png.png``)
    must not turn into another input's panel name (``k.gradcam_panel.png.png``'s).
    """
    return overlay_name.removesuffix(".gradcam.png") + ".gradcam_panel.png"


class Predictor:
    """A run ready to score images (a Run, or a workdir opened at its best checkpoint): ``predict(items)`` yields one dict per input.

    ``data`` is the data set the run trained on ('synthetic' for a debug run, whose
    predictions mean nothing).
    """

    def __init__(
        self,
        run: Run | str,
        threshold: float | str | None = None,
        batch_size: int = 8,
        use_ema: bool = True,
    ):
        if not isinstance(run, Run):
            run = runs.open(run)  # a workdir, at its best checkpoint: Predictor("runs/debug")
        self.run = run
        self.preprocess = Preprocessor.for_run(run)
        self.batch_size = limits.padded_batch_size(
            batch_size, self.preprocess.image_size
        )  # before the weights are read
        self.config, self.model, self.variables, self.step = run.config, run.model(), run.variables(use_ema), run.step
        data = self.config.data
        self.temperature, self.calibration = run.temperature()
        self.class_names = class_names(data)
        self.data = run.training_data or str(data.get("name", ""))
        if len(self.class_names) > 2:
            # No positive class: the label is the most probable class, no threshold.
            self.threshold, self.threshold_source = None, "the most probable of more than two classes"
        else:
            self.threshold, self.threshold_source = resolve_threshold(run, threshold)
        if self.threshold_source != "flag" and self.threshold is not None:
            # Derived on uncalibrated probabilities: mapped like them, so no label changes. A
            # number given on the command line is meant for the probabilities printed.
            self.threshold = calibration_lib.calibrate_threshold(self.threshold, self.temperature)
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
            probs = np.asarray(class_probabilities(out["logits"]), np.float64)[:n]
            return calibration_lib.calibrate_probs(probs, self.temperature), np.asarray(out["heatmap"])[:n]
        if self._predict is None:
            self._predict = make_predict_fn(self.model)
        probs = np.asarray(self._predict(self.variables, padded), np.float64)[:n]
        return calibration_lib.calibrate_probs(probs, self.temperature), None

    def _class_gradcam(self, original, heatmap, record: dict, gradcam_dir: str, name: str) -> dict:
        """Overlay and panel of the most probable class's Grad-CAM map (``make_gradcam`` explains it)."""
        p = record["probs"][record["label"]]
        heatmap = weighted_by_probability(heatmap, p)
        overlay = save_overlay(original, heatmap, os.path.join(gradcam_dir, name))
        panel = save_panel(
            original,
            heatmap,
            os.path.join(gradcam_dir, _panel_name(name)),
            prob=p,
            label=record["label"],
            threshold=None,
            name=os.path.basename(record["file"]),
        )
        return {"gradcam": overlay, "gradcam_panel": panel}

    @property
    def synthetic(self) -> bool:
        return self.data == "synthetic"

    def predict(self, items: Sequence[ImageInput], gradcam_dir: str | None = None) -> Iterator[dict]:
        """Yields ``{'file', 'prob_pneumonia', 'label', 'threshold', 'temperature'[, 'gradcam', 'gradcam_panel']}`` or ``{'file', 'error'}`` per input.

        ``items``: file paths, uint8 arrays (H x W or H x W x 3) or PIL images, mixed freely;
        ``file`` is the path, or ``<array N>`` / ``<image N>`` for the N-th input held in memory;
        ``prob_pneumonia`` is calibrated when ``temperature`` is not 1.
        """
        if isinstance(items, (str, os.PathLike, np.ndarray, Image.Image)):
            items = [items]  # one input, not a sequence of characters or rows
        paths = _input_names(items)
        names = _overlay_names(paths) if gradcam_dir else None
        if gradcam_dir:
            os.makedirs(gradcam_dir, exist_ok=True)
            _refuse_overwriting_inputs(items, names, gradcam_dir)  # before any image is scored
        for start in range(0, len(paths), self.batch_size):
            chunk = list(range(start, min(start + self.batch_size, len(paths))))
            loaded, errors = {}, {}
            for i in chunk:
                try:
                    loaded[i] = self.preprocess(items[i], paths[i])
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
                if self.threshold is None:
                    record = {"file": paths[i], **class_record(probs[scored[i]], self.class_names)}
                    record["temperature"] = self.temperature
                    if gradcam_dir:
                        record.update(
                            self._class_gradcam(loaded[i][1], heatmaps[scored[i]], record, gradcam_dir, names[i])
                        )
                    yield record
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
                    heatmap, original = weighted_by_probability(heatmaps[scored[i]], p), loaded[i][1]
                    record["gradcam"] = save_overlay(original, heatmap, os.path.join(gradcam_dir, names[i]))
                    # For a reader: X-ray | overlay | colour bar, titled with this prediction.
                    record["gradcam_panel"] = save_panel(
                        original,
                        heatmap,
                        os.path.join(gradcam_dir, _panel_name(names[i])),
                        prob=p,
                        label=record["label"],
                        threshold=self.threshold,
                        name=os.path.basename(paths[i]),
                    )
                yield record
