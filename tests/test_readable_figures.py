"""Figures a reader can read: the Grad-CAM panel, the ROC legend, the reliability histogram."""

import numpy as np
from PIL import Image

from effnet_jax.inference.gradcam import EMPTY_MAP_NOTE, panel_figure, save_panel
from effnet_jax.reporting.plots import reliability_figure, roc_figure

XRAY = np.random.default_rng(0).integers(0, 256, (48, 40), dtype=np.uint8)


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def test_the_panel_is_xray_overlay_and_colour_bar_titled_with_the_prediction():
    heat = np.zeros((12, 10), np.float32)
    heat[4:8, 3:6] = 1.0
    fig = panel_figure(XRAY, heat, prob=0.8734, label="PNEUMONIA", threshold=0.5, name="person1_bacteria_1.jpeg")
    assert len(fig.axes) == 3
    assert fig.axes[2].get_ylabel() == "P(PNEUMONIA) x map: the same scale for every image"  # the colour bar
    title = fig._suptitle.get_text()
    assert title == "person1_bacteria_1.jpeg\nP(PNEUMONIA) = 0.873 -> PNEUMONIA (threshold 0.500)"
    assert EMPTY_MAP_NOTE not in _texts(fig.axes[1])


def test_an_all_zero_map_says_it_is_empty():
    fig = panel_figure(XRAY, np.zeros((12, 10), np.float32), prob=0.02, label="NORMAL", threshold=0.745)
    assert _texts(fig.axes[1]) == [EMPTY_MAP_NOTE]
    assert fig._suptitle.get_text() == "P(PNEUMONIA) = 0.020 -> NORMAL (threshold 0.745)"


def test_the_panel_is_written_as_a_png(tmp_path):
    path = save_panel(XRAY, np.ones((12, 10), np.float32), tmp_path / "cams" / "x.png", 0.9, "PNEUMONIA", 0.5)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 200


def test_the_roc_legend_names_a_shared_threshold_once():
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    probs = [0.1, 0.2, 0.52, 0.58, 0.3, 0.6, 0.8, 0.9]
    thresholds = {"operating": 0.5, "t=0.5": 0.5, "training prior": 0.5, "validation Youden": 0.55}
    legend = [t.get_text() for t in roc_figure(labels, probs, thresholds).axes[0].get_legend().get_texts()]
    assert len(legend) == len(set(legend)) == 4
    assert legend[2] == "operating = t=0.5 = training prior: t=0.500 (TPR 0.750, FPR 0.500)"
    assert legend[3] == "validation Youden: t=0.550 (TPR 0.750, FPR 0.250)"


def test_the_reliability_histogram_counts_on_a_linear_axis_with_each_bar_labelled():
    probs = np.array([0.01] * 90 + [0.45] * 3 + [0.97] * 40)
    labels = (probs > 0.5).astype(int)
    fig = reliability_figure(labels, probs)
    bottom = fig.axes[1]
    assert bottom.get_yscale() == "linear" and bottom.get_ylabel() == "images per bin"
    assert [t for t in _texts(bottom) if t] == ["90", "3", "40"]
