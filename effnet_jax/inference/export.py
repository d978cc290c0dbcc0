"""Export a trained run for serving: one ``jax.export`` function plus model.json (``effnet-export``).

The function takes ``(weights, images)``, images being ``(batch, S, S)`` uint8 grey levels
with a symbolic batch, and returns P(PNEUMONIA) per image: grey -> 3 channels, the
weights' normalisation, the network, the calibration temperature (if the run has one)
and the softmax all happen inside it. The resize to S x S stays on the host
(``effnet_jax.serving``), because an exported function has a fixed spatial shape and
effnet-predict's resize is Pillow's. The depthwise convolution is chosen per platform
inside the function (``lax.platform_dependent``): shifted slices on CPU, as effnet-predict
computes them there, the native convolution elsewhere.

A second function, ``gradcam.stablehlo``, takes the same arguments and returns effnet-predict's
guided Grad-CAM map per image, ``(batch, S, S)`` in [0, 1] (``inference.gradcam``): the map needs
the network's last feature map and gradients, which the probability function does not expose,
so it is exported beside it rather than recomputed from it. ``SHA256SUMS`` covers it.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import io
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export
from jax import lax

import effnet_jax
from effnet_jax.data import transforms
from effnet_jax.inference.gradcam import make_gradcam
from effnet_jax.inference.thresholds import resolve_threshold
from effnet_jax.labels import class_names, class_probabilities
from effnet_jax.metrics import calibration as calibration_lib
from effnet_jax.models.ensemble import member_axis
from effnet_jax.output_files import UnsafeOutputError, open_output, output_file_problem
from effnet_jax.progress import Progress
from effnet_jax.runs import Run
from effnet_jax.serving import bundle

DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")


def make_serving_fn(model, treedef, mean, std, temperature: float | None, platforms=DEFAULT_PLATFORMS):
    """``fn(weight_leaves, images uint8 (B, S, S)) -> (B,)`` float32 P(PNEUMONIA) (``(B, C)`` past two classes), for jax.export.

    A model whose depthwise convolution is 'auto' gets effnet-predict's choice per platform
    (shifted slices on CPU, native elsewhere) through ``lax.platform_dependent``; a fixed
    choice in the run's config is kept on every platform.
    """
    # The eval pipeline's own normalisation: a 256 x 3 table of grey level -> normalised RGB.
    table = jnp.asarray(transforms.Normalizer(mean, std).table(np.zeros((1, 1), np.uint8)))

    def probs(m, variables):
        def run(x):
            logits = m.apply(variables, x, train=False).astype(jnp.float32)
            return class_probabilities(logits if temperature is None else logits / temperature)

        return run

    def fn(leaves, images):
        variables = jax.tree_util.tree_unflatten(treedef, leaves)
        x = jnp.take(table, images.astype(jnp.int32), axis=0)  # (B, S, S, 3) float32
        if model.depthwise_impl != "auto":
            return probs(model, variables)(x)
        on_cpu, elsewhere = model.clone(depthwise_impl="shifts"), model.clone(depthwise_impl="native")
        if "cpu" not in platforms:
            return probs(elsewhere, variables)(x)
        if set(platforms) == {"cpu"}:
            return probs(on_cpu, variables)(x)
        return lax.platform_dependent(x, cpu=probs(on_cpu, variables), default=probs(elsewhere, variables))

    return fn


def make_gradcam_fn(model, treedef, mean, std):
    """``fn(weight_leaves, images uint8 (B, S, S)) -> (B, S, S)`` float32 guided Grad-CAM maps in [0, 1].

    The map ``inference.gradcam.make_gradcam`` draws for effnet-predict, on the same normalised
    input as the probability function. It is drawn with the native depthwise convolution on
    every platform: the shifted-slices form's backward pass picks its shape by batch size,
    which a symbolic batch cannot tell.
    """
    table = jnp.asarray(transforms.Normalizer(mean, std).table(np.zeros((1, 1), np.uint8)))
    gradcam = make_gradcam(model.clone(depthwise_impl="native"))

    def fn(leaves, images):
        variables = jax.tree_util.tree_unflatten(treedef, leaves)
        x = jnp.take(table, images.astype(jnp.int32), axis=0)
        return gradcam(variables, x)["heatmap"].astype(jnp.float32)

    return fn


def _metrics_at(run: Run) -> dict:
    """The trainer's evaluation records at the run's step (validation and external splits), numbers only."""
    found = {}
    for record in run.metrics:
        if record.get("step") == run.step and record.get("split") not in (None, "train"):
            found[record["split"]] = {
                k: v for k, v in record.items() if k not in ("step", "split", "time") and not isinstance(v, dict)
            }
    return found


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


OUR_FILES = (bundle.FUNCTION_FILE, bundle.WEIGHTS_FILE, bundle.GRADCAM_FILE, bundle.SUMS_FILE, bundle.MODEL_JSON)


def _prepare_out_dir(out_dir: str):
    """``out_dir`` made, or refused when it holds anything other than an earlier export (or its temporary files)."""
    os.makedirs(out_dir, exist_ok=True)
    ours = {*OUR_FILES, *(f"{name}.tmp" for name in OUR_FILES)}
    others = sorted(set(os.listdir(out_dir)) - ours)
    if others:
        raise ValueError(f"--out={out_dir}: not empty ({', '.join(others[:3])}...); give a new or empty folder")
    for name in sorted(ours & set(os.listdir(out_dir))):  # before the minutes of lowering, not after
        problem = output_file_problem(os.path.join(out_dir, name), "--out")
        if problem:
            raise UnsafeOutputError(problem)


def _write_bundle(out_dir: str, blobs: dict[str, bytes]) -> None:
    """``blobs`` written into ``out_dir`` as ``NAME.tmp`` first, then renamed over ``NAME``, model.json last.

    An earlier export stays whole (and loads) while the files are written: a kill or a full
    disk then leaves it as it was. Only between the renames does the folder lack model.json,
    and a folder holding model.json holds the files it describes. ``open_output`` refuses a
    link (or FIFO, or shared hard link) planted at a name: nothing is written through it.
    """
    for name, blob in blobs.items():
        tmp = os.path.join(out_dir, f"{name}.tmp")
        try:
            with open_output(tmp, "wb") as f:
                f.write(blob)
        except BaseException as e:
            for written in blobs:  # this export's temporary files only; the earlier export stays
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(out_dir, f"{written}.tmp"))
            if isinstance(e, OSError) and e.filename is None:
                raise OSError(e.errno, e.strerror, tmp) from e  # a full disk names the file it stopped
            raise
    model_json = os.path.join(out_dir, bundle.MODEL_JSON)
    if os.path.lexists(model_json):
        os.remove(model_json)
    gradcam_file = os.path.join(out_dir, bundle.GRADCAM_FILE)
    if bundle.GRADCAM_FILE not in blobs and os.path.lexists(gradcam_file):  # an earlier export's, not this model's
        os.remove(gradcam_file)
    for name in (*(n for n in blobs if n != bundle.MODEL_JSON), bundle.MODEL_JSON):
        os.replace(os.path.join(out_dir, f"{name}.tmp"), os.path.join(out_dir, name))


def export_run(
    run: Run,
    out_dir: str,
    threshold: float | str | None = None,
    platforms=DEFAULT_PLATFORMS,
    use_ema: bool = True,
    gradcam: bool = True,
) -> dict:
    """Exports the run's checkpoint into ``out_dir``; returns what model.json records.

    ``gradcam=False`` leaves out the Grad-CAM function (a folder that scores but draws no maps).
    """
    _prepare_out_dir(out_dir)
    # Two stages (lowering for every platform is the long one, then writing the files).
    stages = Progress(2, f"export {run.workdir}", unit="stage", logger=logging.getLogger("effnet_jax.inference"))
    model = run.model()
    members = member_axis(model) or 1
    config, step = run.config, run.step
    size, mean, std = run.input_spec
    names = class_names(config.data)
    if len(names) > 2:
        t_value, t_rule = None, "none: the most probable class (more than two classes)"
    else:
        t_value, t_rule = resolve_threshold(run, threshold)
    # The temperature fitted at this checkpoint (effnet-eval --calibrate), as eval and predict
    # apply it; a rule-derived threshold goes through the same map, so no label changes.
    t, calibration = run.temperature()
    temperature = None if t == 1.0 else t
    if temperature is not None and t_rule != "flag" and t_value is not None:
        t_value = calibration_lib.calibrate_threshold(t_value, temperature)

    leaves, treedef = jax.tree_util.tree_flatten(run.variables(use_ema))
    leaves = [np.asarray(x) for x in leaves]
    fn = make_serving_fn(model, treedef, mean, std, temperature, tuple(platforms))
    (batch,) = jax_export.symbolic_shape("batch")
    args = (
        [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves],
        jax.ShapeDtypeStruct((batch, size, size), jnp.uint8),
    )
    exported = jax_export.export(jax.jit(fn), platforms=tuple(platforms))(*args)
    if gradcam:
        gradcam_fn = make_gradcam_fn(model, treedef, mean, std)
        gradcam = bytes(jax_export.export(jax.jit(gradcam_fn), platforms=tuple(platforms))(*args).serialize())
    stages.update()
    function = bytes(exported.serialize())
    buffer = io.BytesIO()
    np.savez(buffer, *leaves)  # arr_0.npy, arr_1.npy, ... in argument order; no pickles
    weights = buffer.getvalue()

    data = config.data
    metrics = _metrics_at(run)
    meta = {
        "format": bundle.FORMAT,
        "class_names": list(names),
        "positive_class": names[1] if len(names) == 2 else None,
        "output": (
            f"P({names[1]}) per image, float32"
            if len(names) == 2
            else "P(class) per image and class, float32 (batch, classes), in class_names order"
        ),
        "input": {
            "image_size": int(size),
            "dtype": "uint8",
            "center_crop": float(data.get("center_crop", 1.0) or 1.0),
            "max_size": int(data.get("max_size", 512) or 512),
            "equalize": transforms.equalize_mode(data),
            "accepts": "a list of uint8 images of any size, (H, W) grey or (H, W, 3) RGB; or image/DICOM files",
        },
        "preprocessing": {
            "host": (
                "numpy + Pillow, as effnet-predict: decode (DICOM: rescale, VOI window, MONOCHROME1 inverted), "
                "grayscale, stored copy (shorter side <= max_size, LANCZOS, JPEG q95 unless already a grey "
                "JPEG), reduced decode, centre crop center_crop, bilinear resize to image_size, grey levels "
                "spread per image when equalize is 'histogram' (Pillow's ImageOps.equalize)"
            ),
            "in_function": (
                "grey -> 3 channels, (pixels / 255 - mean) / std, network"
                + (f" (each of {members} ensemble members; their logits averaged)" if members > 1 else "")
                + ", logits / temperature, softmax"
            ),
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
        },
        "threshold": {"value": None if t_value is None else float(t_value), "rule": t_rule},
        "temperature": temperature,
        "calibration": calibration,
        "model": {
            "variant": config.model.name,
            "ensemble_members": members,  # 1: one network; N: a seed ensemble (logits averaged)
            "weights_source": config.model.get("pretrained"),
            "checkpoint_step": int(step),
            "checkpoint": str(run.checkpoint),
            "ema": bool(use_ema and config.get("ema_decay", 0) > 0),
            "workdir": run.workdir,
        },
        "training": {
            "data": next((m.get("data") for m in metrics.values() if m.get("data")), data.get("name")),
            "manual_dir": data.get("manual_dir"),
            "split_protocol": data.get("split_protocol"),
            "val_fraction": data.get("val_fraction"),
            "split_seed": data.get("split_seed"),
            "external": [str(p) for p in (data.get("external") or ())],
            "train_class_counts": [int(n) for n in run.record.train_class_counts],
            "select_split": config.get("select_split"),
        },
        "metrics": metrics,
        "platforms": list(exported.platforms),
        "versions": {
            "effnet_jax": effnet_jax.__version__,
            "jax": jax.__version__,
            "jaxlib": _version("jaxlib"),
            "flax": _version("flax"),
        },
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "files": {
            "function": {"name": bundle.FUNCTION_FILE, "bytes": len(function), "sha256": bundle.sha256(function)},
            "weights": {"name": bundle.WEIGHTS_FILE, "bytes": len(weights), "sha256": bundle.sha256(weights)},
        },
    }
    if gradcam:  # same arguments as the function; returns the guided Grad-CAM map per image (B, S, S) in [0, 1]
        meta["files"]["gradcam"] = {
            "name": bundle.GRADCAM_FILE,
            "bytes": len(gradcam),
            "sha256": bundle.sha256(gradcam),
        }
    blobs = {bundle.FUNCTION_FILE: function, bundle.WEIGHTS_FILE: weights}
    if gradcam:
        blobs[bundle.GRADCAM_FILE] = gradcam
    text = json.dumps(meta, indent=2) + "\n"
    blobs[bundle.SUMS_FILE] = bundle.sums_text({bundle.MODEL_JSON: text.encode(), **blobs}).encode()
    blobs[bundle.MODEL_JSON] = text.encode()
    _write_bundle(out_dir, blobs)
    stages.update()
    stages.close()
    return meta
