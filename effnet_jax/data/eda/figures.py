"""PNG figures of the report (matplotlib, Agg backend: no display needed)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI machines and TPU hosts have no display
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from effnet_jax.labels import CLASS_NAMES  # pylint: disable=g-import-not-at-top,wrong-import-position
from effnet_jax.output_files import printable_line, replaced_output  # pylint: disable=g-import-not-at-top,wrong-import-position

_COLOURS = {"NORMAL": "#1f77b4", "PNEUMONIA": "#d62728"}


def class_balance(report: dict, path: Path) -> Path:
    """Grouped bars: images per class in each split, before and after the proposed cleaning."""
    after = report["cleaning"]["counts_after"]
    splits = list(report["splits"])
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(splits), 3.6))
    x = np.arange(len(splits))
    for k, label in enumerate(CLASS_NAMES):
        n = [report["splits"][s]["classes"][label]["images"] for s in splits]
        kept = [after.get(s, {}).get(label, 0) for s in splits]
        bars = ax.bar(x + (k - 0.5) * 0.38, n, 0.36, color=_COLOURS[label], alpha=0.35)
        ax.bar(x + (k - 0.5) * 0.38, kept, 0.36, color=_COLOURS[label], label=f"{label} (kept)")
        ax.bar_label(bars, [f"{v:,}" for v in n], fontsize=8)
    ax.set_xticks(x, splits)
    ax.set_ylabel("images")
    ax.set_title("Class balance per split (pale: excluded by cleaning)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def sizes(inventory, report: dict, path: Path) -> Path:
    """Width vs height scatter per class, and the aspect-ratio histogram."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    ok = [img for img in inventory.images if img.error is None]
    for label in CLASS_NAMES:
        w = [img.width for img in ok if img.label == label]
        h = [img.height for img in ok if img.label == label]
        ax.scatter(w, h, s=4, alpha=0.4, color=_COLOURS[label], label=f"{label} ({len(w):,})")
        if w:
            bx.hist(np.divide(w, h), bins=40, alpha=0.5, color=_COLOURS[label], label=label)
    kind = report["image_properties"]["size_kind"]
    ax.set(xlabel="width (px)", ylabel="height (px)", title=f"{kind} image sizes")
    bx.set(xlabel="aspect ratio (width / height)", ylabel="images", title="aspect ratio")
    ax.legend(fontsize=8)
    bx.legend(fontsize=8)
    return _save(fig, path)


def intensity(inventory, path: Path) -> Path:
    """Mean grayscale histogram per class (each image normalised to sum 1 first)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, hist in inventory.histograms.items():
        ax.plot(np.arange(256), hist, color=_COLOURS.get(label), label=label)
    ax.set(xlabel="gray level", ylabel="fraction of pixels", title="Intensity histogram per class")
    ax.legend(fontsize=8)
    return _save(fig, path)


def samples(inventory, path: Path) -> Path:
    """A grid of sample thumbnails: one row per class, file names as titles."""
    rows = [(label, inventory.samples.get(label, [])) for label in CLASS_NAMES]
    cols = max([len(s) for _, s in rows] + [1])
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.7 * cols, 2.0 * len(rows)), squeeze=False)
    for r, (label, thumbs) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(thumbs):
                key, thumb = thumbs[c]
                ax.imshow(thumb, cmap="gray", vmin=0, vmax=255)
                # A file name as text: non-UTF-8 bytes and control codes escaped, '$' not read as mathtext.
                ax.set_title(printable_line(key.split("/", 1)[1]), fontsize=5, parse_math=False)
        axes[r][0].text(
            -0.1, 0.5, label, transform=axes[r][0].transAxes, rotation=90, ha="right", va="center", fontsize=10
        )
    fig.suptitle("Sample images per class (seeded choice)")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    try:
        fig.tight_layout()
        # Drawn beside the name and renamed over it: a kill leaves the earlier figure whole, and matplotlib
        # would write through a link planted at the name.
        with replaced_output(path, "wb") as f:
            fig.savefig(f, format="png", dpi=120)
    finally:
        plt.close(fig)
    return path


def draw_all(inventory, report: dict, out_dir: Path) -> list[str]:
    """Draw every figure into `out_dir`; returns the file names written."""
    out_dir = Path(out_dir)
    made = [
        class_balance(report, out_dir / "class_balance.png"),
        sizes(inventory, report, out_dir / "sizes.png"),
        intensity(inventory, out_dir / "intensity.png"),
        samples(inventory, out_dir / "samples.png"),
    ]
    return [p.name for p in made]
