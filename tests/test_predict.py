"""effnet-predict's input handling: preprocessing, unreadable files, thresholds, missing checkpoints."""

import dataclasses
import json
import os

import ml_collections
import numpy as np
import pytest
from helpers import hand_made_run
from PIL import Image

from effnet_jax import runs
from effnet_jax.inference.prediction import ImageReadError, Predictor, Preprocessor, _overlay_names
from effnet_jax.inference.thresholds import resolve_threshold
from effnet_jax.runs.record import RunRecord

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def write(path, array, **kw):
    Image.fromarray(array).save(path, **kw)
    return str(path)


def test_gray_and_rgb_copies_of_an_image_give_the_same_input(tmp_path):
    gray = (np.arange(40 * 60) % 251).astype(np.uint8).reshape(40, 60)
    pre = Preprocessor(image_size=16, mean=MEAN, std=STD)
    a, shown = pre(write(tmp_path / "g.png", gray))
    b, _ = pre(write(tmp_path / "c.png", np.repeat(gray[..., None], 3, axis=2)))
    assert a.shape == (16, 16, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[..., 0], a[..., 2])  # grayscale replicated into 3 channels
    assert shown.mode == "L" and shown.size == (60, 40)  # the overlay is drawn on the full image


def test_normalisation_uses_mean_and_std(tmp_path):
    flat = np.full((20, 20), 255, np.uint8)
    image, _ = Preprocessor(image_size=8, mean=MEAN, std=STD)(write(tmp_path / "w.png", flat))
    np.testing.assert_allclose(image, (1.0 - 0.5) / 0.25, rtol=1e-6)


def test_unreadable_files_raise_naming_the_file(tmp_path):
    pre = Preprocessor(image_size=8, mean=MEAN, std=STD)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(ImageReadError, match="bad.jpg"):
        pre(str(bad))
    with pytest.raises(ImageReadError, match="missing.png: cannot read file"):
        pre(str(tmp_path / "missing.png"))


def test_threshold_precedence(tmp_path):
    workdir = tmp_path / "run"
    config = {"data": {"balance": "oversample", "name": "synthetic"}, "class_weights": "none"}
    run = hand_made_run(workdir, config, step=7, train_class_counts=(100, 300))
    assert resolve_threshold(run, "0.3") == (0.3, "flag")
    # 'auto': the run's training prior (0.5 after balancing).
    assert resolve_threshold(run, None) == (0.5, "training_prior")
    config["data"]["balance"] = "none"
    run = hand_made_run(workdir, config, step=7, train_class_counts=(100, 300))
    assert resolve_threshold(run, "auto") == (0.75, "training_prior")
    with pytest.raises(ValueError, match="--threshold=youden: no validation threshold stored for step 7"):
        resolve_threshold(run, "youden")
    out = workdir / "eval" / "test_7"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({"step": 7, "validation_threshold": 0.42}))
    (workdir / "eval" / "test_7_tta-flip").mkdir()
    (workdir / "eval" / "test_7_tta-flip" / "metrics.json").write_text(
        json.dumps({"step": 7, "validation_threshold": 0.9})
    )
    value, source = resolve_threshold(run, "youden")
    assert value == 0.42 and "validation Youden" in source
    with pytest.raises(ValueError, match="step 8"):
        resolve_threshold(dataclasses.replace(run, step=8), "youden")  # stored for another step only
    with pytest.raises(ValueError, match="--threshold"):
        resolve_threshold(run, "1.5")


def test_training_prior_comes_from_the_run_record_and_counts_class_weights():
    record = RunRecord(image_size=32, mean=MEAN, std=STD, train_class_counts=(100, 300))
    config = ml_collections.ConfigDict({"data": {"balance": "none"}, "class_weights": "balanced"})
    assert record.training_prior(config) == pytest.approx(0.5)
    config.class_weights = "3,1"  # NORMAL x3: 300 vs 300
    assert record.training_prior(config) == pytest.approx(0.5)
    config.class_weights = "1,2"
    assert record.training_prior(config) == pytest.approx(600 / 700)
    config.data.balance = "oversample"
    assert record.training_prior(config) == 0.5
    config.data.balance = "none"
    assert dataclasses.replace(record, train_class_counts=()).training_prior(config) is None  # counted again


def test_overlay_names_stay_distinct():
    from effnet_jax.output_files import short_hash

    names = _overlay_names(["a/x.png", "b/x.jpeg", "c/y.png"])
    assert names == [
        f"x-{short_hash('a/x.png')}.gradcam.png",
        f"x-{short_hash('b/x.jpeg')}.gradcam.png",
        "y.gradcam.png",
    ]
    # Names that only a lossy slug or case folding would merge, and one path given twice.
    names = _overlay_names(["a b.png", "a_b.png", "C/Q.png", "d/q.png", "z.png", "z.png", "<array 0>", "array_0.png"])
    assert len({n.lower() for n in names}) == 8
    assert all(n.endswith(".gradcam.png") and "/" not in n and not n.startswith(".") for n in names)


def test_workdir_without_checkpoints_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoints in workdir"):
        Predictor(runs.open(str(tmp_path)))
    assert not os.path.exists(tmp_path / "checkpoints")


def test_preprocessing_equals_the_eval_pipeline_on_the_stored_copy(tmp_path):
    """Train/serve skew check: a file scores through the same pixels as its copy in a prepared split."""

    from effnet_jax.data import imaging, pipeline

    rng = np.random.default_rng(0)
    path = write(tmp_path / "x.png", rng.integers(0, 256, (90, 70), dtype=np.uint8))
    with open(path, "rb") as f:
        stored, _ = imaging.load_for_storage(f.read(), path, 64)

    class OneImage:
        def read_image(self, part, record):
            return stored

    load = pipeline._LoadExample(
        OneImage(),
        np.array([0]),
        np.array([0]),
        np.array([1]),
        np.array([0]),
        training=False,
        image_size=24,
        mean=MEAN,
        std=STD,
        center_crop=0.9,
    )
    example = load((0, 0, 0))
    # The pipeline may hand out finished images or (grey, lookup table) pairs that batching expands.
    expected = example["image"] if "image" in example else pipeline._assemble([example])["image"][0]
    got, _ = Preprocessor(image_size=24, mean=MEAN, std=STD, center_crop=0.9, max_size=64)(path)
    np.testing.assert_array_equal(got, expected)
