"""The real chest_xray data in ../shared/data (skipped where it is absent)."""

import data_fixtures as fx
import numpy as np
import pytest

from effnet_jax.data import pipeline, sources
from effnet_jax.train.config import default_data_config

pytestmark = pytest.mark.skipif(not fx.SHARED_CHEST_XRAY.is_dir(), reason=f"{fx.SHARED_CHEST_XRAY} not present")


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    c = default_data_config()
    c.name = "chest_xray"
    c.manual_dir = str(fx.SHARED_CHEST_XRAY)
    c.data_dir = str(tmp_path_factory.mktemp("tfds"))
    sources.catalog(c)  # prepares once for the module (about 10 s)
    return c


def test_prepared_official_splits_have_the_exact_counts(cfg):
    metas, _ = sources.catalog(cfg)
    assert sorted(metas) == ["train", "val"]
    assert np.bincount(metas["train"].labels).tolist() == [1341, 3875]
    assert np.bincount(metas["val"].labels).tolist() == [8, 8]


def test_patient_split_shares_no_patient_and_covers_official_train(cfg):
    train = sources.selection(cfg, "train")
    val = sources.selection(cfg, "validation")
    assert len(train) + len(val) == 5216
    assert set(train.patient_ids).isdisjoint(val.patient_ids)
    info_t, info_v = pipeline.split_info(cfg, "train"), pipeline.split_info(cfg, "validation")
    assert set(info_t["file_names"]).isdisjoint(info_v["file_names"])
    assert info_v["class_counts"][0] + info_t["class_counts"][0] == 1341
    assert abs(info_v["num_examples"] / 5216 - 0.1) < 0.01
    # Stratified: validation's NORMAL share is train's (1341 / 5216 = 25.7 %).
    assert abs(info_v["class_counts"][0] / info_v["num_examples"] - 1341 / 5216) < 0.02


def test_test_split_is_absent_here_and_says_so(cfg):
    with pytest.raises(ValueError, match="no official test folder"):
        pipeline.split_info(cfg, "test")


def test_official_val_is_the_16_images_of_val_and_pooled_runs_refuse_it(cfg):
    info = pipeline.split_info(cfg, "official_val")
    assert info["num_examples"] == 16 and info["class_counts"] == [8, 8]
    assert sorted(info["file_names"])[0] == "NORMAL2-IM-1427-0001.jpeg"
    pooled = cfg.copy_and_resolve_references()
    pooled.split_protocol = "pooled"
    with pytest.raises(ValueError, match="pooled into train/validation/test"):
        pipeline.split_info(pooled, "official_val")


def test_pooled_protocol_splits_all_5232_images_60_20_20(cfg):
    pooled = cfg.copy_and_resolve_references()
    pooled.split_protocol = "pooled"
    sizes = [pipeline.split_info(pooled, s)["num_examples"] for s in ("train", "validation", "test")]
    assert sum(sizes) == 5232
    np.testing.assert_allclose(np.array(sizes) / 5232, [0.6, 0.2, 0.2], atol=0.002)


def test_training_batches_at_224_and_deterministic_eval(cfg):
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    it = iter(
        pipeline.create_split(
            cfg,
            "train",
            training=True,
            batch_size=4,
            image_size=224,
            mean=mean,
            std=std,
            seed=0,
            shard_index=0,
            shard_count=1,
        )
    )
    batch = next(it)
    assert batch["gray"].shape == (4, 224, 224) and batch["gray"].dtype == np.uint8
    make_eval = lambda: pipeline.create_split(
        cfg,
        "validation",
        training=False,
        batch_size=8,
        image_size=224,
        mean=mean,
        std=std,
        seed=0,
        shard_index=0,
        shard_count=1,
    )
    a, b = next(iter(make_eval())), next(iter(make_eval()))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["index"].tolist() == list(range(8))


def test_kermany3_dry_run_shows_the_three_classes_of_train_and_of_the_external_set(tmp_path):
    from helpers import load_config

    from effnet_jax.train import plan

    config = load_config("kermany3")
    config.data.manual_dir = str(fx.SHARED_CHEST_XRAY)
    config.data.external = (str(fx.SHARED_CHEST_XRAY.with_name("chest_xray_external")),)
    config.select_split = "external"
    config.data.data_dir = str(tmp_path / "tfds")  # not prepared there: counted from the folders
    text = plan.describe(config, str(tmp_path / "run"))
    assert "train/: 5,216 images (BACTERIAL 2,530, NORMAL 1,341, VIRAL 1,345)" in text
    assert "314 images (BACTERIAL 118, NORMAL 118, VIRAL 78) (never trained on)" in text


def test_the_shipped_exclusion_list_leaves_out_exactly_its_images(cfg):
    from effnet_jax.data import exclusions

    listed = exclusions.read("packaged:chest_xray_rejected")
    excluded = cfg.copy_and_resolve_references()
    excluded.exclude_list = "packaged:chest_xray_rejected"  # configs/pneumonia.py's value
    metas, _ = sources.catalog(excluded)  # prepared anew beside the full set (another config name)
    removed = [sum(k.startswith(f"train/{c}/") for k in listed) for c in ("NORMAL", "PNEUMONIA")]
    assert np.bincount(metas["train"].labels).tolist() == [1341 - removed[0], 3875 - removed[1]]
    names = set(pipeline.split_info(excluded, "train")["file_names"]) | set(
        pipeline.split_info(excluded, "validation")["file_names"]
    )
    assert len(names) == 5216 - len(listed) and not names & {k.split("/")[-1] for k in listed}
