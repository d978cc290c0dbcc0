"""Plots are written as valid PNG images."""

from PIL import Image

from effnet_jax.reporting.plots import plot_confusion_matrix, plot_reliability, plot_roc_curve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 100 and im.size[1] > 100


def test_confusion_matrix_png(tmp_path):
    path = plot_confusion_matrix([[2, 2], [1, 3]], tmp_path / "sub" / "cm.png", title="test")
    assert path == str(tmp_path / "sub" / "cm.png")
    _assert_png(path)


def test_confusion_matrix_with_an_empty_row(tmp_path):
    _assert_png(plot_confusion_matrix([[0, 0], [1, 3]], tmp_path / "cm.png"))


def test_roc_png_with_marked_thresholds(tmp_path):
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    probs = [0.1, 0.2, 0.52, 0.58, 0.3, 0.6, 0.8, 0.9]
    _assert_png(plot_roc_curve(labels, probs, tmp_path / "roc.png", {"0.5": 0.5, "Youden": 0.6}))


def test_roc_png_single_class(tmp_path):
    _assert_png(plot_roc_curve([1, 1, 1], [0.2, 0.5, 0.9], tmp_path / "roc.png"))


def test_reliability_png(tmp_path):
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    probs = [0.1, 0.2, 0.52, 0.58, 0.3, 0.6, 0.8, 0.9]
    _assert_png(plot_reliability(labels, probs, tmp_path / "reliability.png"))
    _assert_png(plot_reliability([], [], tmp_path / "empty.png"))
