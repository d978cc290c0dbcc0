"""Evaluate a checkpoint on a split: metrics at four thresholds with bootstrap intervals, plots, JSON.

    Run (runs.open; any device count) -> predict_split (jitted, optional TTA)
      -> temperature scaling (the run's calibration file, fitted here with calibrate=SPLIT)
      -> compute_metrics at the operating threshold, 0.5, the training prior and the
         validation Youden threshold, each with bootstrap 95% intervals (by patient)
      -> WORKDIR/eval/<split>_<step>/{metrics.json, *.png, predictions.csv} (runs.layout)
      -> an EvalReport

A task with more than two classes (docs/your-own-task.md) has no positive class and no
threshold: ``evaluate_classes`` reports each class one-vs-rest, their macro and weighted
averages and the confusion matrix of the most probable class.

No threshold is chosen on the split being reported (except when that split is the
validation split itself, which the report says), so test numbers are honest.

Thresholds are derived on the model's own (uncalibrated) probabilities and recorded so at
the top of metrics.json (``operating_threshold``, ...); with a temperature they are carried
through the same map as the probabilities, so every label is unchanged and each metrics
entry's ``threshold`` is the one applied to the reported (calibrated) probabilities.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import logging
import os
import sys
import time
import warnings
from typing import Any

import jax
import numpy as np

import effnet_jax.reporting.plots as plots
from effnet_jax import limits
from effnet_jax.data import create_split, split_info
from effnet_jax.data.external import FOLDER_PREFIX
from effnet_jax.data.pipeline import run_pass
from effnet_jax.inference import tta as tta_lib
from effnet_jax.inference.thresholds import operating_threshold, training_prior_threshold
from effnet_jax.labels import CLASS_NAMES
from effnet_jax.labels import class_names as task_class_names
from effnet_jax.metrics import calibration as calibration_lib
from effnet_jax.metrics import classification as metrics_lib
from effnet_jax.metrics import intervals as intervals_lib
from effnet_jax.metrics import multiclass
from effnet_jax.output_files import (
    UnsafeOutputError,
    csv_cell,
    open_output_fd,
    printable_line,
    replaced_output,
    short_hash,
    slug,
)
from effnet_jax.progress import Progress
from effnet_jax.runs import Run
from effnet_jax.runs import calibration as calibration_file
from effnet_jax.runs.layout import EVAL_REPORT

log = logging.getLogger("effnet_jax.inference")

VALIDATION = "validation"


@dataclasses.dataclass
class SplitPredictions:
    """Per-example results of one pass over a split (padding rows removed), in split order."""

    labels: np.ndarray  # int64 (N,)
    probs: np.ndarray  # float64 (N,), probability of PNEUMONIA; (N, C) past two classes
    index: np.ndarray  # int64 (N,), position in the split
    seconds: float = 0.0


def make_predict_fn(model, tta: tta_lib.TTAConfig | str | None = None):
    """A jitted ``fn(variables, images) -> (B,)`` probability of PNEUMONIA, averaged over TTA views.

    Cached per (model, TTA setting): the validation and test passes, and repeated
    calls in one process, share one compiled program.
    """
    return _cached_predict_fn(model, tta_lib.parse_tta(tta))


@functools.lru_cache(maxsize=8)
def _cached_predict_fn(model, config: tta_lib.TTAConfig):

    @jax.jit
    def predict(variables, images):
        return tta_lib.predict_probs(lambda x: model.apply(variables, x, train=False), images, config)

    return predict


def predict_split(
    model,
    variables,
    data_config,
    split: str,
    *,
    image_size: int,
    mean,
    std,
    batch_size: int,
    tta: tta_lib.TTAConfig | str | None = None,
    progress: bool = True,
) -> SplitPredictions:
    """Runs the model over one deterministic pass of ``split``; returns labels and probabilities."""
    total = split_info(data_config, split)["num_examples"]
    if total == 0:
        raise ValueError(f"split {split!r} of data set {data_config.name!r} has no examples.")
    predict = make_predict_fn(model, tta)
    # Single-host evaluation reads the whole split, whatever jax.process_count() says.
    dataset = create_split(
        data_config,
        split,
        training=False,
        batch_size=batch_size,
        image_size=image_size,
        mean=mean,
        std=std,
        seed=0,
        shard_index=0,
        shard_count=1,
    )
    bar = _progress(total, f"eval {split}", progress)
    start = time.perf_counter()
    iterator = iter(dataset)

    def step(batch):
        return {
            "prob": np.asarray(predict(variables, batch["image"]), dtype=np.float64),
            "label": batch["label"],
            "index": batch["index"],
            "mask": batch["mask"],
        }

    try:
        rows = run_pass(iterator, step, bar.update)
    finally:
        bar.close()
        close = getattr(iterator, "close", None)
        if close:
            close()
    out = SplitPredictions(
        rows["label"].astype(np.int64), rows["prob"], rows["index"].astype(np.int64), time.perf_counter() - start
    )
    if out.labels.size != total:
        raise RuntimeError(f"split {split!r}: expected {total} examples, the pipeline gave {out.labels.size}.")
    order = np.argsort(out.index, kind="stable")
    return SplitPredictions(out.labels[order], out.probs[order], out.index[order], out.seconds)


def _progress(total: int, desc: str, enabled: bool) -> Progress:
    return Progress(total, desc, unit="img", enabled=enabled, logger=log)


def output_dir(run: Run, split: str, tta: tta_lib.TTAConfig) -> str:
    """``WORKDIR/eval/<split>_<step>``, with a ``_tta-<spec>`` suffix when TTA changed the predictions.

    The folder's name is derived from the split, never joined from it: ``folder:PATH``
    becomes ``folder-<slug of the folder's name>-<hash of its resolved path>``, so a path
    (``../``, absolute, links) cannot lead the outputs out of ``WORKDIR/eval/``.
    """
    name = f"{split_slug(split)}_{run.step}"
    if tta.num_views > 1:
        name += f"_tta-{tta.spec()}"
    return run.layout.eval_dir(name)


def _output_folder(run: Run, out_dir: str) -> str:
    """``out_dir``, created; refused (UnsafeOutputError) when the run's eval/ or the folder is a planted link.

    A downloaded run may hold ``eval -> /elsewhere`` or ``eval/validation_3 -> /elsewhere``:
    writing the reports through it would land them outside the run. An ``--out_dir`` given
    outside the run is the user's choice and is used as given.
    """
    inside = run.layout.eval == out_dir or os.path.dirname(out_dir) == run.layout.eval
    for folder in (run.layout.eval, out_dir) if inside else ():
        if os.path.islink(folder) or (os.path.lexists(folder) and not os.path.isdir(folder)):
            raise UnsafeOutputError(f"{folder}: a link or not a folder; refusing to write the evaluation through it")
    os.makedirs(out_dir, exist_ok=True)
    return out_dir


def _own(path: str) -> str:
    """``path``, refused (UnsafeOutputError) when a link, FIFO or shared file is planted there.

    Checked before the plot is drawn; the earlier plot is left as it is until the new one
    replaces it whole (``plots._save``), so a kill mid-draw never leaves half a PNG.
    """
    if os.path.lexists(path):
        os.close(open_output_fd(path, os.O_RDONLY))
    return path


@dataclasses.dataclass(frozen=True)
class _ReportHead:
    """The fields every metrics.json starts with: which run, checkpoint, split and model."""

    workdir: str
    checkpoint: str | int
    step: int
    split: str
    split_default: str | None  # why this split, when none was asked for
    data: str | None
    synthetic: bool
    num_examples: int
    class_counts: Any
    class_names: list
    model: str
    image_size: int
    tta: str
    ema: bool

    def to_json(self) -> dict:
        """metrics.json's content, in its order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("json", True)}


@dataclasses.dataclass(frozen=True)
class EvalReport(_ReportHead):
    """What ``evaluate_checkpoint`` found: metrics.json's fields (``to_json``), its folder and a printable table.

    The threshold fields are on the uncalibrated probabilities; each ``metrics`` entry holds
    the threshold mapped through the temperature, as applied to the reported probabilities.
    """

    validation_threshold: float
    threshold_source: str
    training_prior_threshold: float
    operating_threshold: float
    operating_threshold_rule: str
    temperature: float
    calibration: str
    uncalibrated: dict  # brier and ece of the uncalibrated probabilities at 0.5
    metrics: dict  # 'operating', 'threshold_0.5', 'threshold_training_prior', 'threshold_validation_youden'
    seconds: float
    warnings: list
    files: dict  # name -> file name inside out_dir
    out_dir: str = dataclasses.field(default="", metadata={"json": False})
    table: str = dataclasses.field(default="", metadata={"json": False})


def _pass(run: Run, split, tta_config, batch_size, use_ema: bool, progress: bool):
    """``(model, variables, predict_split's keyword arguments, split, why that split, its split_info)``."""
    batch_size = _batch_size(run, batch_size)  # before the weights are read
    config, model, variables = run.config, run.model(), run.variables(use_ema)
    image_size, mean, std = run.input_spec
    args = dict(image_size=image_size, mean=mean, std=std, batch_size=batch_size, tta=tta_config, progress=progress)
    default_because = None
    if split is None:
        split, default_because = held_out_split(config.data)
    return model, variables, args, split, default_because, split_info(config.data, split)


def _batch_size(run: Run, batch_size: int | None) -> int:
    """``batch_size``, else the run's ``eval_batch_size`` (or ``batch_size``), held to the budget as effnet-predict's.

    A downloaded run's config.json may say ``eval_batch_size=10**12``: every batch is padded to
    it, so it is refused in one line naming the key before the weights are read.
    """
    config, key = run.config, "--batch_size"
    if batch_size is None:
        key = "config.eval_batch_size" if config.get("eval_batch_size") else "config.batch_size"
        batch_size = config.get("eval_batch_size") or config.get("batch_size") or 32
    return limits.padded_batch_size(batch_size, run.input_spec[0], key)


def _head(run: Run, split, default_because, info: dict, result, class_names, tta_config, use_ema) -> dict:
    """The ``_ReportHead`` fields of a report on ``split``."""
    config = run.config
    return dict(
        workdir=run.workdir,
        checkpoint=run.checkpoint if isinstance(run.checkpoint, str) else int(run.checkpoint),
        step=run.step,
        split=split,
        split_default=default_because,
        data=config.data.get("name"),
        synthetic=bool(info.get("synthetic")),
        num_examples=int(result.labels.size),
        class_counts=info.get("class_counts"),
        class_names=class_names,
        model=config.model.name,
        image_size=run.input_spec[0],
        tta=tta_config.spec(),
        ema=use_ema and config.get("ema_decay", 0) > 0,
    )


def held_out_split(data_config) -> tuple[str, str]:
    """The split a run is scored on by default, and why: test where the data has one, else validation."""
    try:
        if split_info(data_config, "test")["num_examples"] > 0:
            return "test", "the data's test split, held out from training and checkpoint choice"
    except ValueError:
        pass
    return VALIDATION, (
        "the data has no test split: the validation split the run trained with (never trained on, "
        "but it chose the checkpoint, so its numbers lean optimistic)"
    )


def split_slug(split: str) -> str:
    """A folder name for ``split``: the name itself for the run's splits, derived for ``folder:PATH``."""
    if split.startswith(FOLDER_PREFIX):
        folder = os.path.realpath(os.path.expanduser(split[len(FOLDER_PREFIX) :]))
        return f"folder-{slug(os.path.basename(folder))}-{short_hash(folder)}"
    return slug(split)


def evaluate_checkpoint(
    run: Run,
    split: str | None = None,
    tta: tta_lib.TTAConfig | str | None = None,
    batch_size: int | None = None,
    use_ema: bool = True,
    progress: bool = True,
    out_dir: str | None = None,
    calibrate: str | None = None,
    bootstrap_resamples: int = intervals_lib.DEFAULT_RESAMPLES,
    bootstrap_seed: int = 0,
) -> EvalReport:
    """Evaluates the run's checkpoint on ``split``; writes metrics.json, plots and predictions; returns the report.

    ``split`` None: the run's held-out split (``held_out_split``: test where the data has
    one, else validation); the report's ``split_default`` says which and why.

    Metrics are reported at the run's operating threshold, 0.5, the training-prior
    threshold (``training_prior_threshold``) and the threshold maximising Youden's J on
    the validation split (on ``split`` itself when that is the validation split, and the
    report says so), each with bootstrap intervals (``bootstrap_resamples``; 0 = none),
    resampling patients where the split has patient ids. ``calibrate``: a split to fit
    the temperature on at this checkpoint (written to the run's calibration file);
    otherwise a calibration file fitted at this checkpoint is applied. Restores onto the
    first local device, whatever the run was trained on.
    """
    tta_config = tta_lib.parse_tta(tta)
    if len(task_class_names(run.config.data)) > 2:
        return evaluate_classes(run, split, tta_config, batch_size, use_ema, progress, out_dir, calibrate)
    config, step = run.config, run.step
    model, variables, args, split, default_because, info = _pass(run, split, tta_config, batch_size, use_ema, progress)

    result = predict_split(model, variables, config.data, split, **args)
    if split == VALIDATION:
        val, threshold_source = result, "youden_on_validation (the split being reported)"
    else:
        val, threshold_source = predict_split(model, variables, config.data, VALIDATION, **args), "youden_on_validation"
    seconds = result.seconds + (0.0 if val is result else val.seconds)
    if calibrate:
        fit = {split: result, VALIDATION: val}.get(calibrate)
        if fit is None:
            fit = predict_split(model, variables, config.data, calibrate, **args)
            seconds += fit.seconds
        fitted = calibration_lib.fit_calibration(fit.labels, fit.probs, calibrate, step, tta_config.spec())
        calibration_file.write_calibration(run.layout, fitted)
        run = run.with_calibration(fitted)
    temperature, calibration_note = run.temperature()
    if calibrate == split:
        calibration_note += " [fitted on the split being reported]"
    probs = calibration_lib.calibrate_probs(result.probs, temperature)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threshold = metrics_lib.youden_threshold(val.labels, val.probs)
        prior = training_prior_threshold(run)
        operating, operating_rule = operating_threshold(run)
        # Rule-derived thresholds go through the temperature's map too: the same images on each side.
        mapped = {
            name: calibration_lib.calibrate_threshold(t, temperature)
            for name, t in (("operating", operating), ("0.5", 0.5), ("prior", prior), ("youden", threshold))
        }
        at_operating, at_half, at_prior, at_youden = (
            metrics_lib.compute_metrics(result.labels, probs, t) for t in mapped.values()
        )
        uncalibrated = metrics_lib.compute_metrics(result.labels, result.probs, 0.5)
    notes = sorted({str(w.message) for w in caught})
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    columns = (at_operating, at_half, at_prior, at_youden)
    if bootstrap_resamples > 0:
        cis = intervals_lib.bootstrap_intervals(
            result.labels,
            probs,
            [m["threshold"] for m in columns],
            groups=info.get("patient_ids"),
            num_resamples=bootstrap_resamples,
            seed=bootstrap_seed,
        )
        for m, ci in zip(columns, cis):
            m["ci95"] = ci

    out_dir = _output_folder(run, out_dir or output_dir(run, split, tta_config))
    class_names = info.get("class_names") or list(CLASS_NAMES)
    synthetic = bool(info.get("synthetic"))
    tag = (
        f"{split} @ step {step}"
        + (" (synthetic data)" if synthetic else "")
        + (f", T={temperature:.2f}" if temperature != 1.0 else "")
    )
    files = {
        "metrics": os.path.join(out_dir, EVAL_REPORT),
        "confusion_matrix_0.5": plots.plot_confusion_matrix(
            at_half["confusion_matrix"],
            _own(os.path.join(out_dir, "confusion_matrix_0.5.png")),
            class_names,
            f"{tag}, t=0.5",
        ),
        "confusion_matrix_youden": plots.plot_confusion_matrix(
            at_youden["confusion_matrix"],
            _own(os.path.join(out_dir, "confusion_matrix_youden.png")),
            class_names,
            f"{tag}, t={mapped['youden']:.3f} (val. Youden)",
        ),
        "roc": plots.plot_roc_curve(
            result.labels,
            probs,
            _own(os.path.join(out_dir, "roc.png")),
            {
                "operating": mapped["operating"],
                "t=0.5": 0.5,
                "training prior": mapped["prior"],
                "validation Youden": mapped["youden"],
            },
            f"ROC, {tag}",
        ),
        "reliability": plots.plot_reliability(
            result.labels, probs, _own(os.path.join(out_dir, "reliability.png")), title=f"Reliability, {tag}"
        ),
        "predictions": _write_predictions(
            os.path.join(out_dir, "predictions.csv"), result, probs, info.get("file_names")
        ),
    }
    report = EvalReport(
        **_head(run, split, default_because, info, result, class_names, tta_config, use_ema),
        validation_threshold=threshold,
        threshold_source=threshold_source,
        training_prior_threshold=prior,
        operating_threshold=operating,
        operating_threshold_rule=operating_rule,
        temperature=temperature,
        calibration=calibration_note,
        uncalibrated={"brier": uncalibrated["brier"], "ece": uncalibrated["ece"]},
        metrics={
            "operating": at_operating,
            "threshold_0.5": at_half,
            "threshold_training_prior": at_prior,
            "threshold_validation_youden": at_youden,
        },
        seconds=round(seconds, 3),
        warnings=notes,
        files={k: os.path.basename(v) for k, v in files.items()},
        out_dir=out_dir,
        table=metrics_lib.format_table(
            {"operating": at_operating, "t=0.5": at_half, "train prior": at_prior, "val. Youden": at_youden}
        ),
    )
    with replaced_output(files["metrics"]) as f:  # a kill mid-write keeps the earlier report whole
        json.dump(metrics_lib.json_safe(report.to_json()), f, indent=2, allow_nan=False)
        f.write("\n")
    return report


@dataclasses.dataclass(frozen=True)
class ClassesReport(_ReportHead):
    """What ``evaluate_classes`` found for a task of more than two classes: metrics.json's fields and a table."""

    temperature: float
    calibration: str
    uncalibrated: dict  # top-label ece and log loss of the uncalibrated probabilities
    metrics: dict  # 'argmax': per class one-vs-rest, macro and weighted averages, confusion matrix
    seconds: float
    warnings: list
    files: dict
    out_dir: str = dataclasses.field(default="", metadata={"json": False})
    table: str = dataclasses.field(default="", metadata={"json": False})


def evaluate_classes(
    run: Run,
    split: str | None,
    tta_config: tta_lib.TTAConfig,
    batch_size: int | None = None,
    use_ema: bool = True,
    progress: bool = True,
    out_dir: str | None = None,
    calibrate: str | None = None,
) -> ClassesReport:
    """``evaluate_checkpoint`` for more than two classes: metrics of the most probable class, per-class ROC plots."""
    config, step = run.config, run.step
    model, variables, args, split, default_because, info = _pass(run, split, tta_config, batch_size, use_ema, progress)
    names = list(task_class_names(config.data))
    result = predict_split(model, variables, config.data, split, **args)
    seconds = result.seconds
    if calibrate:
        fit = result if calibrate == split else predict_split(model, variables, config.data, calibrate, **args)
        seconds += 0.0 if fit is result else fit.seconds
        fitted = calibration_lib.fit_calibration(fit.labels, fit.probs, calibrate, step, tta_config.spec())
        calibration_file.write_calibration(run.layout, fitted)
        run = run.with_calibration(fitted)
    temperature, calibration_note = run.temperature()
    probs = calibration_lib.calibrate_probs(result.probs, temperature)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = multiclass.compute_metrics(result.labels, probs, names)
        raw = multiclass.compute_metrics(result.labels, result.probs, names)
    notes = sorted({str(w.message) for w in caught})
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    out_dir = _output_folder(run, out_dir or output_dir(run, split, tta_config))
    tag = f"{split} @ step {step}" + (" (synthetic data)" if info.get("synthetic") else "")
    files = {
        "metrics": os.path.join(out_dir, EVAL_REPORT),
        "confusion_matrix": plots.plot_confusion_matrix(
            found["confusion_matrix"],
            _own(os.path.join(out_dir, "confusion_matrix.png")),
            names,
            f"{tag}, most probable",
        ),
        "roc": plots.plot_roc_per_class(
            result.labels, probs, names, _own(os.path.join(out_dir, "roc.png")), f"ROC, {tag}"
        ),
        "predictions": _write_class_predictions(
            os.path.join(out_dir, "predictions.csv"), result, probs, info.get("file_names"), names
        ),
    }
    report = ClassesReport(
        **_head(run, split, default_because, info, result, names, tta_config, use_ema),
        temperature=temperature,
        calibration=calibration_note,
        uncalibrated={"ece": raw["ece"], "log_loss": raw["log_loss"]},
        metrics={"argmax": found},
        seconds=round(seconds, 3),
        warnings=notes,
        files={k: os.path.basename(v) for k, v in files.items()},
        out_dir=out_dir,
        table=multiclass.format_table(found),
    )
    with replaced_output(files["metrics"]) as f:  # a kill mid-write keeps the earlier report whole
        json.dump(metrics_lib.json_safe(report.to_json()), f, indent=2, allow_nan=False)
        f.write("\n")
    return report


def _write_class_predictions(path: str, result: SplitPredictions, probs: np.ndarray, file_names, names) -> str:
    # One column per class, calibrated when a temperature applies; 'predicted' is the most probable.
    with replaced_output(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "file", "label", "predicted", *(f"prob_{n}" for n in names)])
        for i, label, row in zip(result.index.tolist(), result.labels.tolist(), probs):
            name = file_names[i] if file_names is not None else ""
            writer.writerow(
                [
                    i,
                    csv_cell(printable_line(name)),
                    names[label],
                    names[int(np.argmax(row))],
                    *(f"{p:.6f}" for p in row),
                ]
            )
    return path


def calibrate_checkpoint(
    run: Run,
    split: str,
    tta: tta_lib.TTAConfig | str | None = None,
    batch_size: int | None = None,
    use_ema: bool = True,
    progress: bool = True,
) -> calibration_lib.Calibration:
    """Fits temperature scaling on ``split`` at the run's checkpoint; writes the run's calibration file and returns it."""
    tta_config = tta_lib.parse_tta(tta)
    config = run.config
    image_size, mean, std = run.input_spec
    batch_size = _batch_size(run, batch_size)
    fit = predict_split(
        run.model(),
        run.variables(use_ema),
        config.data,
        split,
        image_size=image_size,
        mean=mean,
        std=std,
        batch_size=batch_size,
        tta=tta_config,
        progress=progress,
    )
    calibration = calibration_lib.fit_calibration(fit.labels, fit.probs, split, run.step, tta_config.spec())
    calibration_file.write_calibration(run.layout, calibration)
    return calibration


def _write_predictions(path: str, result: SplitPredictions, probs: np.ndarray, file_names) -> str:
    # prob_pneumonia is what the report scored (calibrated when a temperature applies).
    with replaced_output(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "file", "label", "prob_pneumonia", "prob_uncalibrated"])
        rows = zip(result.index.tolist(), result.labels.tolist(), probs.tolist(), result.probs.tolist())
        for i, label, p, raw in rows:
            name = file_names[i] if file_names is not None else ""
            writer.writerow([i, csv_cell(printable_line(name)), label, f"{p:.6f}", f"{raw:.6f}"])
    return path
