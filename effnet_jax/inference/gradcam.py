"""Grad-CAM (Selvaraju et al., 2017) heatmaps for EfficientNet, overlay PNGs and panels for readers.

The model adds a zero "perturbation" to its last convolutional feature map A
(``self.perturb('head_features', ...)``), so the gradient of a logit with respect
to that perturbation is d logit / dA. Each channel's weight is that gradient
averaged over space; the map is relu(sum_c weight_c * A_c), upsampled to the
input size. For a seed ensemble (models.ensemble.LogitEnsemble) the logit is the
ensemble's mean logit and A every member's feature map: the sum runs over the members'
channels too, as if the members' maps were one map with all their channels.

A panel (``save_panel``) shows the X-ray, the overlay and the colour scale side by side,
titled with P(PNEUMONIA), the label and the threshold that gave it; a map that is all
zero says so, rather than showing a plain X-ray that looks like a map of nothing.
effnet-predict draws maps weighted by P(PNEUMONIA) (``weighted_by_probability``), so
colours compare between images: each map is not stretched to its own peak.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from effnet_jax.models.ensemble import member_axis
from effnet_jax.output_files import printable_line, replaced_output

PERTURBATION = "head_features"


PREDICTED = "predicted"  # class_index: each image's most probable class


def default_class_index(num_classes: int) -> int | str:
    """The logit that speaks for PNEUMONIA: the only one of a sigmoid head, class 1 of a softmax head.

    Past two classes there is no positive class: each image's most probable class (``PREDICTED``).
    """
    if num_classes == 1:
        return 0
    if num_classes == 2:
        return 1
    return PREDICTED


def make_gradcam(model, class_index: int | str | None = None) -> Callable[[dict, jax.Array], dict[str, jax.Array]]:
    """Returns a jitted ``fn(variables, images) -> {'cam', 'heatmap', 'logits'}``.

    ``cam`` is the raw Grad-CAM map at the head's resolution ``(B, h, w)``; ``heatmap`` is
    that map bilinearly upsampled to the input size ``(B, H, W)``, sharpened by the input
    gradient (below) and scaled to [0, 1] per image (all zeros when nothing supports the
    class); ``logits`` are the model's outputs on ``images``. ``class_index`` defaults to
    the PNEUMONIA logit (past two classes, ``PREDICTED``: each image's most probable class);
    any class's index maps that class.

    The head sees the image at 1/32 of its size (4 x 4 cells at 128 px), too coarse to
    point at a lung zone. As Guided Grad-CAM does, the upsampled map is multiplied by
    the magnitude of the logit's gradient with respect to the input pixels, here
    smoothed over a few pixels (``_smooth``) so it marks regions rather than single pixels.
    """
    index = default_class_index(model.num_classes) if class_index is None else class_index
    # An ensemble's feature maps carry a leading member axis: (M, B, h, w, c).
    members = "m" if member_axis(model) else ""

    def fn(variables, images):
        variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
        head = model.apply(variables, images, train=False, features_only=True)["head"]

        def target_logit(perturbation, pixels):
            logits = model.apply({**variables, "perturbations": {PERTURBATION: perturbation}}, pixels, train=False)
            # Summing over the batch keeps examples independent: each logit only depends on its own map.
            if index == PREDICTED:
                chosen = jax.lax.stop_gradient(jnp.argmax(logits, axis=-1))
                return jnp.take_along_axis(logits, chosen[:, None], axis=-1).sum(), logits
            return logits[:, index].sum(), logits

        (grads, pixel_grads), logits = jax.grad(target_logit, argnums=(0, 1), has_aux=True)(
            jnp.zeros_like(head), images
        )
        head, grads = head.astype(jnp.float32), grads.astype(jnp.float32)
        weights = grads.mean(axis=(-3, -2))
        cam = jax.nn.relu(jnp.einsum(f"{members}bhwc,{members}bc->bhw", head, weights))
        b, h, w = images.shape[:3]
        up = jax.nn.relu(jax.image.resize(cam, (b, h, w), method="bilinear"))
        guided = up * _smooth(jnp.abs(pixel_grads.astype(jnp.float32)).max(axis=-1), max(1.0, min(h, w) / 64))
        peak = guided.max(axis=(1, 2), keepdims=True)
        heatmap = jnp.where(peak > 0, guided / jnp.where(peak > 0, peak, 1.0), 0.0)
        return {"cam": cam, "heatmap": heatmap, "logits": logits}

    return jax.jit(fn)


def _smooth(maps: jax.Array, sigma: float) -> jax.Array:
    """``(B, H, W)`` maps blurred by a Gaussian of ``sigma`` pixels (separable, edges zero-padded)."""
    radius = int(math.ceil(2 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = jnp.asarray(taps / taps.sum(), jnp.float32)
    x = maps[:, None]  # (B, 1, H, W): one channel
    for kernel in (taps[:, None], taps[None, :]):
        x = jax.lax.conv_general_dilated(x, kernel[None, None], (1, 1), "SAME")
    return x[:, 0]


def gradcam(model, variables: dict, images, class_index: int | None = None) -> np.ndarray:
    """Grad-CAM heatmaps in [0, 1] at the input size, ``(B, H, W)`` (compiles once per call)."""
    return np.asarray(make_gradcam(model, class_index)(variables, jnp.asarray(images))["heatmap"])


def _to_gray(image) -> np.ndarray:
    """A float image in [0, 1], ``(H, W)``, from a PIL image or an array (uint8 or float, gray or RGB)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    array = np.asarray(image)
    if array.ndim == 3:
        array = array.mean(axis=-1)
    if array.ndim != 2:
        raise ValueError(f"overlay: expected an (H, W) or (H, W, C) image, got shape {np.asarray(image).shape}.")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    array = array.astype(np.float32)
    lo, hi = float(array.min()), float(array.max())
    # Normalised model inputs have arbitrary range; stretch them for display.
    return (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)


def overlay(image, heatmap, alpha: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """Blends a colour-mapped heatmap onto the grayscale image; uint8 RGB at the image's size.

    The heatmap is resized to the image, so it can be drawn on the original file
    rather than on the downscaled model input.
    """
    from matplotlib import colormaps

    gray = _to_gray(image)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != gray.shape:
        heat = np.asarray(Image.fromarray(heat, mode="F").resize((gray.shape[1], gray.shape[0]), Image.BILINEAR))
    heat = np.clip(heat, 0.0, 1.0)
    colour = colormaps[colormap](heat)[..., :3]
    # Weight the colour by the heat so that cold regions show the X-ray itself.
    a = alpha * heat[..., None]
    blended = (1.0 - a) * gray[..., None] + a * colour
    return np.round(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_overlay(image, heatmap, path: str | os.PathLike, alpha: float = 0.45, colormap: str = "jet") -> str:
    """Writes ``overlay(image, heatmap)`` as a PNG; returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    rgb = Image.fromarray(overlay(image, heatmap, alpha, colormap), mode="RGB")
    # Drawn beside the name and renamed over it (never through a link planted there): a kill
    # mid-write leaves an earlier run's overlay whole.
    with replaced_output(path, "wb") as f:
        rgb.save(f, format="PNG")
    return path


EMPTY_MAP_NOTE = "empty map: no region raises\nP(PNEUMONIA) for this image"
# One scale for every image: the map (its own peak = 1) times P(PNEUMONIA), so a confident
# NORMAL shows next to no colour and only a confident PNEUMONIA reaches the top.
SCALE_LABEL = "P(PNEUMONIA) x map: the same scale for every image"


def weighted_by_probability(heatmap, prob: float) -> np.ndarray:
    """The map on the scale every panel shares: ``heatmap`` (peak 1) times P(PNEUMONIA)."""
    return np.asarray(heatmap, dtype=np.float32) * np.float32(prob)


def panel_figure(image, heatmap, prob: float, label: str, threshold: float, name: str = "", colormap: str = "jet"):
    """A matplotlib Figure: the X-ray | its Grad-CAM overlay | the colour bar, titled with the prediction."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    gray = _to_gray(image)
    heat = np.asarray(heatmap, dtype=np.float32)
    fig = Figure(figsize=(8.0, 4.2), dpi=100)
    grid = fig.add_gridspec(1, 3, width_ratios=[1, 1, 0.05], wspace=0.08)
    original, blended, scale = (fig.add_subplot(grid[i]) for i in range(3))
    original.imshow(gray, cmap="gray", vmin=0.0, vmax=1.0)
    original.set_title("X-ray", fontsize=9)
    blended.imshow(overlay(image, heat, colormap=colormap))
    blended.set_title(f"guided Grad-CAM for {label if threshold is None else 'PNEUMONIA'}", fontsize=9)
    for ax in (original, blended):
        ax.set_xticks([])
        ax.set_yticks([])
    if not float(heat.max(initial=0.0)) > 0.0:
        blended.text(
            0.5,
            0.5,
            EMPTY_MAP_NOTE,
            transform=blended.transAxes,
            ha="center",
            va="center",
            fontsize=9,
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.5"},
        )
    fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap=colormap), cax=scale, label=SCALE_LABEL)
    # The file's name as text: bytes that are not UTF-8 and control codes escaped (matplotlib's font
    # code raised TypeError on the first, warned on the second), '$' not read as mathtext (a name
    # holding '$\\sqrt{$' raised ParseSyntaxException).
    head = f"{printable_line(name)}\n" if name else ""
    if threshold is None:  # more than two classes: the most probable one, and its map
        fig.suptitle(f"{head}P({label}) = {prob:.3f}, the most probable class", fontsize=10, parse_math=False)
    else:
        fig.suptitle(
            f"{head}P(PNEUMONIA) = {prob:.3f} -> {label} (threshold {threshold:.3f})", fontsize=10, parse_math=False
        )
    return fig


def save_panel(image, heatmap, path: str | os.PathLike, prob: float, label: str, threshold: float, name: str = ""):
    """Writes ``panel_figure(...)`` as a PNG; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig = panel_figure(image, heatmap, prob, label, threshold, name)
    FigureCanvasAgg(fig)
    with replaced_output(path, "wb") as f:
        fig.savefig(f, format="png", dpi=fig.dpi, bbox_inches="tight")
    return path
