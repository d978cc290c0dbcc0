"""Evaluation figures written as PNG files: confusion matrix, ROC curve, reliability diagram.

Uses matplotlib's object API on the Agg canvas (never pyplot's global state), so
plotting works headless, in threads and under pytest without touching the
caller's backend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from effnet_jax.labels import CLASS_NAMES
from effnet_jax.metrics.classification import expected_calibration_error, roc_points
from effnet_jax.output_files import replaced_output


def _save(fig: Figure, path: str | os.PathLike) -> str:
    """``fig`` as a PNG at ``path``, drawn beside it and renamed over it once whole (``replaced_output``).

    A kill mid-draw leaves the earlier plot as it was, and a link planted at the name is refused.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    FigureCanvasAgg(fig)
    with replaced_output(path, "wb") as f:
        fig.savefig(f, format="png", dpi=fig.dpi, bbox_inches="tight")
    return path


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]], path: str | os.PathLike, class_names: Sequence[str] = CLASS_NAMES, title: str = ""
) -> str:
    """Draws a 2x2 confusion matrix (rows: true label, columns: prediction) with counts and row percentages."""
    cm = np.asarray(cm, dtype=np.int64)
    if cm.shape != (len(class_names), len(class_names)):
        raise ValueError(
            f"plot_confusion_matrix: matrix of shape {cm.shape} does not match "
            f"{len(class_names)} class names {list(class_names)}."
        )
    row_sums = cm.sum(axis=1, keepdims=True)
    # A row with no examples has no rate; show 0% rather than dividing by zero.
    rates = np.divide(cm, row_sums, out=np.zeros(cm.shape), where=row_sums > 0)
    fig = Figure(figsize=(4.2, 3.8), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            colour = "white" if rates[i, j] > 0.5 else "black"
            ax.text(j, i, f"{cm[i, j]}\n{100 * rates[i, j]:.1f}%", ha="center", va="center", color=colour)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=list(class_names))
    ax.set_yticks(ticks, labels=list(class_names), rotation=90, va="center")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "Confusion matrix")
    return _save(fig, path)


def plot_roc_per_class(labels, probs, class_names: Sequence[str], path: str | os.PathLike, title: str = "") -> str:
    """One-vs-rest ROC curve of every class (P(class) of its images against the others'), with each AUC."""
    labels = np.asarray(labels).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    fig = Figure(figsize=(4.6, 4.2), dpi=100)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    from sklearn.metrics import auc as area

    for k, name in enumerate(class_names):
        fpr, tpr, _ = roc_points((labels == k).astype(np.int64), probs[:, k])
        if fpr.size:
            ax.plot(fpr, tpr, linewidth=2, label=f"{name} vs rest (AUC = {area(fpr, tpr):.4f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title or "ROC per class, one vs rest")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def roc_figure(labels, probs, thresholds: dict[str, float] | None = None, title: str = "") -> Figure:
    """The ROC curve with its AUC, each named operating threshold marked on it (see ``plot_roc_curve``)."""
    labels = np.asarray(labels).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    fig = Figure(figsize=(4.6, 4.2), dpi=100)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    fpr, tpr, _ = roc_points(labels, probs)
    if fpr.size:
        from sklearn.metrics import auc as area

        ax.plot(fpr, tpr, color="tab:blue", linewidth=2, label=f"ROC (AUC = {area(fpr, tpr):.4f})")
        positives, negatives = labels == 1, labels == 0
        markers = iter(["o", "s", "^", "D", "v"])
        for names, t in _merge_equal_thresholds(thresholds or {}):
            point_tpr = float(np.mean(probs[positives] >= t))
            point_fpr = float(np.mean(probs[negatives] >= t))
            ax.plot(
                point_fpr,
                point_tpr,
                marker=next(markers, "o"),
                markersize=8,
                linestyle="none",
                label=f"{' = '.join(names)}: t={t:.3f} (TPR {point_tpr:.3f}, FPR {point_fpr:.3f})",
            )
    else:
        ax.text(0.5, 0.5, "ROC undefined:\nonly one class in the labels", ha="center", va="center")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title or "ROC curve")
    ax.legend(loc="lower right", fontsize=7)
    return fig


def _merge_equal_thresholds(thresholds: dict[str, float]) -> list[tuple[list[str], float]]:
    """Names sharing one threshold (the operating rule is often the training prior) as one legend entry."""
    merged: dict[float, list[str]] = {}
    for name, t in thresholds.items():
        merged.setdefault(round(float(t), 6), []).append(name)
    return [(names, t) for t, names in merged.items()]


def plot_roc_curve(
    labels, probs, path: str | os.PathLike, thresholds: dict[str, float] | None = None, title: str = ""
) -> str:
    """Draws the ROC curve with its AUC and marks each named operating threshold on it.

    ``thresholds`` maps a legend name (``"0.5"``, ``"Youden (validation)"``) to a
    probability threshold; each is marked at the (FPR, TPR) it gives on these data, and
    names with the same threshold share one mark and one legend entry. With a single
    class in ``labels`` there is no curve: the figure says so.
    """
    return _save(roc_figure(labels, probs, thresholds, title), path)


def reliability_figure(labels, probs, num_bins: int = 10, title: str = "") -> Figure:
    """The reliability diagram (see ``plot_reliability``)."""
    from matplotlib.ticker import MaxNLocator
    from sklearn.calibration import calibration_curve

    labels = np.asarray(labels).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    fig = Figure(figsize=(4.6, 5.4), dpi=100)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    top.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfectly calibrated")
    if labels.size:
        observed, predicted = calibration_curve(labels, probs, n_bins=num_bins, strategy="uniform")
        ece = expected_calibration_error(labels, probs)
        top.plot(predicted, observed, marker="o", color="tab:blue", label=f"model (ECE {ece:.3f})")
        counts, edges, bars = bottom.hist(probs, bins=num_bins, range=(0, 1), color="tab:blue", alpha=0.7)
        # Counts on a plain axis, each bar labelled: a log axis hid how few images sit mid-range.
        bottom.bar_label(bars, labels=[str(int(c)) if c else "" for c in counts], fontsize=7, padding=1)
        bottom.set_ylim(0, max(counts.max(), 1) * 1.3)
    bottom.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
    top.set_ylabel("observed fraction PNEUMONIA")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.legend(loc="upper left", fontsize=8)
    top.set_title(title or "Reliability")
    bottom.set_xlabel("predicted P(PNEUMONIA)")
    bottom.set_ylabel("images per bin")
    return fig


def plot_reliability(labels, probs, path: str | os.PathLike, num_bins: int = 10, title: str = "") -> str:
    """Reliability diagram: observed PNEUMONIA rate against mean predicted probability per bin,
    with the count of predictions per bin below (where most of them sit, and how confident)."""
    return _save(reliability_figure(labels, probs, num_bins, title), path)
