"""configs/debug.py on a small real folder: imbalanced like Kermany's train/, it still learns both classes.

Skipped where ../shared/data is absent (a fresh clone).
"""

import logging
import shutil

import data_fixtures as fx
import pytest
from helpers import load_config

from effnet_jax.runs.metrics_log import read_metrics
from effnet_jax.train import loop

needs_shared_data = pytest.mark.skipif(not fx.SHARED_CHEST_XRAY.is_dir(), reason=f"{fx.SHARED_CHEST_XRAY} not present")


def _small_real_folder(root, normal: int, pneumonia: int):
    """Every k-th file of each class of ../shared's train/ (spread over many patients), copied under ``root``."""
    for cls, n in (("NORMAL", normal), ("PNEUMONIA", pneumonia)):
        files = sorted((fx.SHARED_CHEST_XRAY / "train" / cls).iterdir())
        target = root / "train" / cls
        target.mkdir(parents=True)
        for path in files[:: len(files) // n][:n]:
            shutil.copy(path, target / path.name)
    return root


@pytest.mark.slow  # trains for real
@needs_shared_data
def test_debug_config_on_imbalanced_real_xrays_is_not_a_one_class_model(tmp_path, caplog):
    raw = _small_real_folder(tmp_path / "chest_xray", normal=32, pneumonia=96)  # 25% NORMAL, as Kermany's
    config = load_config("debug")
    config.data.manual_dir = str(raw)
    config.data.data_dir = str(tmp_path / "tfds")
    # Faster to compile and run; the recipe under test (class weights, epochs, cadence) is the config's.
    config.image_size = 64
    config.model.depthwise_impl = "native"
    config.num_devices = 1
    config.progress_bar = False
    with caplog.at_level(logging.WARNING, logger="effnet_jax"):
        loop.train_and_evaluate(config, str(tmp_path / "run"))
    evals = read_metrics(str(tmp_path / "run"), "validation")
    # eval_every_epochs=1.5 of 3 epochs: at 1.5 and 3 epochs (and at the last step, if not one of them).
    assert 2 <= len(evals) <= 3
    final = evals[-1]
    assert loop.degenerate_prediction(final) is None
    assert 0 < final["specificity"] < 1 or 0 < final["recall"] < 1
    assert final["auc"] > 0.5  # a dozen validation images: better than chance is what it can show
    assert not [m for m in caplog.messages if "calls every image" in m]


def test_a_one_class_model_is_named_once_per_run(caplog):
    all_pneumonia = {"recall": 1.0, "specificity": 0.0}
    all_normal = {"recall": 0.0, "specificity": 1.0}
    assert loop.degenerate_prediction(all_pneumonia) == "PNEUMONIA"
    assert loop.degenerate_prediction(all_normal) == "NORMAL"
    assert loop.degenerate_prediction({"recall": 1.0, "specificity": 0.02}) is None
    warned = set()
    with caplog.at_level(logging.WARNING, logger="effnet_jax.train"):
        loop._warn_if_degenerate(18, "validation", all_pneumonia, warned)
        loop._warn_if_degenerate(36, "validation", all_normal, warned)
    assert len(caplog.messages) == 1
    assert caplog.messages[0].startswith("step 18 validation: the model calls every image PNEUMONIA (recall 1.000")
    assert "config.class_weights='balanced'" in caplog.messages[0]
