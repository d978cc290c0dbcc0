"""The grain pipeline on the synthetic source: shapes, determinism, resume, sharding, balance."""

import numpy as np
import pytest

from effnet_jax.data import pipeline, sampling, transforms
from effnet_jax.train.config import default_data_config

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _cfg(**overrides):
    cfg = default_data_config()
    cfg.name = "synthetic"
    cfg.synthetic_examples = 64
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def _train(cfg, seed=0, batch_size=8, image_size=32, **kw):
    return pipeline.create_split(
        cfg,
        "train",
        training=True,
        batch_size=batch_size,
        image_size=image_size,
        mean=MEAN,
        std=STD,
        seed=seed,
        shard_index=kw.pop("shard_index", 0),
        shard_count=kw.pop("shard_count", 1),
    )


def _eval(cfg, split="validation", batch_size=6, image_size=32, **kw):
    return pipeline.create_split(
        cfg, split, training=False, batch_size=batch_size, image_size=image_size, mean=MEAN, std=STD, seed=0, **kw
    )


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_train_batch_has_contract_keys_shapes_and_dtypes():
    it = iter(_train(_cfg(), batch_size=4, image_size=40))
    batch = next(it)
    # Grey uint8, resized once: the train step augments and normalises on the device. The
    # default zoom (down to 0.7 of the area) gets a frame of ceil(40 / sqrt(0.7)) = 48 px.
    assert set(batch) == {"gray", "label", "mask"}
    assert batch["gray"].shape == (4, 48, 48) and batch["gray"].dtype == np.uint8
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    assert batch["mask"].dtype == np.bool_ and batch["mask"].all()


def test_split_info_of_synthetic():
    info = pipeline.split_info(_cfg(), "train")
    assert info == {
        "num_examples": 64,
        "class_counts": [16, 48],
        "class_names": ["NORMAL", "PNEUMONIA"],
        "synthetic": True,
        "file_names": None,
        "patient_ids": None,
    }
    assert pipeline.split_info(_cfg(), "validation")["num_examples"] == 16
    assert pipeline.split_info(_cfg(), "test")["num_examples"] == 16


def test_same_seed_gives_same_batches_and_other_seed_differs():
    a = _take(iter(_train(_cfg(), seed=3)), 12)  # 12 batches of 8 = 1.5 epochs of 64
    b = _take(iter(_train(_cfg(), seed=3)), 12)
    c = _take(iter(_train(_cfg(), seed=4)), 12)
    _assert_same(a, b)
    assert not np.array_equal(a[0]["gray"], c[0]["gray"])


def test_each_epoch_visits_every_example_once_in_a_new_order():
    order = sampling.TrainOrder(np.array([0, 1] * 10), "none", seed=0)
    e0, e1 = order.epoch_order(0), order.epoch_order(1)
    assert sorted(e0) == list(range(20)) and sorted(e1) == list(range(20))
    assert not np.array_equal(e0, e1)
    assert [order[i][0] for i in range(20, 40)] == list(e1)


def test_resume_from_state_gives_the_uninterrupted_batches():
    ds = _train(_cfg(), seed=1)
    uninterrupted = _take(iter(ds), 10)
    it = iter(ds)
    _take(it, 6)
    state = it.get_state()
    resumed = iter(_train(_cfg(), seed=1))  # a fresh pipeline, as after a restart
    resumed.set_state(state)
    _assert_same(uninterrupted[6:], _take(resumed, 4))


def test_training_rows_are_the_eval_view_of_the_same_examples_at_the_frame_size():
    # The host never augments: a training row is the example's whole frame resized once,
    # what evaluation sees (before normalising) at the frame's size: the model's size without
    # zoom, ceil(48 / sqrt(0.7)) = 58 with the default zoom, 64 (the synthetic images' own) at 0.5.
    order = sampling.TrainOrder(pipeline.sources.selection(_cfg(), "train").labels, "none", seed=0)
    first = order.epoch_order(0)[:2]
    for enabled, scale_min, frame in ((False, 0.7, 48), (True, 0.7, 58), (True, 0.5, 64)):
        cfg = _cfg()
        cfg.augment.enabled, cfg.augment.scale_min = enabled, scale_min
        assert pipeline.training_frame(cfg, "train", 48) == frame
        gray = next(iter(_train(cfg, batch_size=2, image_size=48)))["gray"]
        eval_batch = list(_eval(cfg, split="train", batch_size=64, image_size=frame, shard_index=0, shard_count=1))[0]
        np.testing.assert_array_equal(transforms.Normalizer(MEAN, STD)(gray), eval_batch["image"][first])


def test_decode_split_gives_every_training_row_in_shard_order():
    cfg = _cfg()
    decoded = pipeline.decode_split(cfg, "train", image_size=32, shard_index=1, shard_count=2)
    # 32 examples a shard, each the frame of the default zoom: ceil(32 / sqrt(0.7)) = 39 px.
    assert decoded["gray"].shape == (32, 39, 39) and decoded["gray"].dtype == np.uint8
    eval_batch = list(_eval(cfg, split="train", batch_size=32, image_size=39, shard_index=1, shard_count=2))[0]
    np.testing.assert_array_equal(transforms.Normalizer(MEAN, STD)(decoded["gray"]), eval_batch["image"])
    np.testing.assert_array_equal(decoded["label"], eval_batch["label"])


def test_equalize_spreads_the_levels_of_every_training_row_and_eval_image():
    # data.equalize='histogram' maps each image's own grey levels (Pillow's ImageOps.equalize)
    # after the resize, so training rows and evaluation images are the plain ones, equalized.
    plain = pipeline.decode_split(_cfg(), "train", image_size=32, shard_index=0, shard_count=1)["gray"]
    spread = pipeline.decode_split(_cfg(equalize="histogram"), "train", image_size=32, shard_index=0, shard_count=1)
    assert spread["gray"].shape == plain.shape == (64, 39, 39)
    for row, original in zip(spread["gray"], plain):
        np.testing.assert_array_equal(row, transforms.equalize(original, "histogram"))
        order = np.argsort(original, axis=None, kind="stable")  # levels keep their order, spread to the ends
        assert np.all(np.diff(row.reshape(-1)[order].astype(int)) >= 0) and row.max() == 255
    assert (spread["gray"] != plain).mean() > 0.5
    eval_batch = list(_eval(_cfg(equalize="histogram"), split="train", batch_size=64, image_size=39))[0]
    np.testing.assert_array_equal(transforms.Normalizer(MEAN, STD)(spread["gray"]), eval_batch["image"])
    flat = np.full((5, 7), 90, np.uint8)  # one level: nothing to spread, left as stored
    np.testing.assert_array_equal(transforms.equalize(flat, "histogram"), flat)
    with pytest.raises(ValueError, match=r"data.equalize='clahe': expected one of none, histogram"):
        _train(_cfg(equalize="clahe"))


def test_eval_is_one_padded_deterministic_pass():
    batches = list(_eval(_cfg(), batch_size=6, shard_index=0, shard_count=1))
    assert len(batches) == 3  # 16 examples -> 6 + 6 + 4 real, padded to 6
    mask = np.concatenate([b["mask"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    assert mask.tolist() == [True] * 16 + [False] * 2
    assert index.tolist() == list(range(16)) + [-1, -1]
    assert batches[-1]["index"].dtype == np.int64
    np.testing.assert_array_equal(batches[-1]["image"][4:], 0.0)
    _assert_same(batches, list(_eval(_cfg(), batch_size=6, shard_index=0, shard_count=1)))


def test_eval_shards_are_disjoint_cover_the_split_and_have_equal_length():
    shards = [list(_eval(_cfg(), batch_size=4, shard_index=i, shard_count=3)) for i in range(3)]
    assert len({len(s) for s in shards}) == 1
    seen = [int(i) for s in shards for b in s for i, m in zip(b["index"], b["mask"]) if m]
    assert sorted(seen) == list(range(16))


def test_train_shards_read_disjoint_examples():
    sel = pipeline.sources.selection(_cfg(), "train")
    seen = []
    for shard in range(2):
        order = sampling.TrainOrder(sel.labels[shard::2], "none", seed=0, shard_index=shard)
        seen.append(set(np.arange(shard, 64, 2)[order.epoch_order(0)]))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 64


@pytest.mark.parametrize("balance,epoch_len", [("oversample", 96), ("undersample", 32)])
def test_balance_equalises_classes_every_epoch(balance, epoch_len):
    labels = pipeline.sources.selection(_cfg(), "train").labels  # 16 NORMAL, 48 PNEUMONIA
    order = sampling.TrainOrder(labels, balance, seed=0)
    assert order.epoch_len == epoch_len
    for epoch in range(3):
        picked = labels[order.epoch_order(epoch)]
        assert np.bincount(picked).tolist() == [epoch_len // 2, epoch_len // 2]
    if balance == "oversample":
        counts = np.bincount(order.epoch_order(0), minlength=64)
        assert counts[labels == 0].tolist() == [3] * 16  # each NORMAL exactly 3 times
        assert counts[labels == 1].tolist() == [1] * 48


def test_balanced_training_batches_carry_balanced_labels():
    it = iter(_train(_cfg(balance="undersample"), batch_size=8))
    labels = np.concatenate([b["label"] for b in _take(it, 4)])  # exactly one epoch of 32
    assert np.bincount(labels).tolist() == [16, 16]


def test_bad_config_values_name_the_key():
    with pytest.raises(ValueError, match="data.balance"):
        _train(_cfg(balance="smote"))
    with pytest.raises(ValueError, match="split="):
        _eval(_cfg(), split="dev", shard_index=0, shard_count=1)


def test_worker_processes_give_the_in_process_batches_and_resume():
    reference = _take(iter(_train(_cfg(), seed=2)), 5)
    ds = _train(_cfg(num_workers=2), seed=2)
    it = iter(ds)
    try:
        first = _take(it, 3)
        state = it.get_state()
    finally:
        it.close()
    _assert_same(reference[:3], first)
    resumed = iter(ds)
    try:
        resumed.set_state(state)
        _assert_same(reference[3:], _take(resumed, 2))
    finally:
        resumed.close()


def test_synthetic_classes_are_learnable_by_nearest_centroid():
    train = list(_eval(_cfg(), split="train", batch_size=64, shard_index=0, shard_count=1))[0]
    val = list(_eval(_cfg(), split="validation", batch_size=16, shard_index=0, shard_count=1))[0]
    flat = lambda b: b["image"][..., 0].reshape(len(b["label"]), -1)
    centroids = np.stack([flat(train)[train["label"] == c].mean(0) for c in (0, 1)])
    dist = ((flat(val)[:, None] - centroids[None]) ** 2).sum(-1)
    assert (dist.argmin(1) == val["label"]).mean() >= 0.9


def test_make_global_batch_builds_sharded_jax_arrays():
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    batch = next(iter(_eval(_cfg(), batch_size=4, shard_index=0, shard_count=1)))
    out = pipeline.make_global_batch(batch, NamedSharding(mesh, PartitionSpec("data")))
    assert isinstance(out["image"], jax.Array) and out["image"].shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(np.asarray(out["index"]), batch["index"])


def test_eval_with_worker_processes_is_the_same_single_pass():
    reference = list(_eval(_cfg(), batch_size=6, shard_index=0, shard_count=1))
    it = iter(_eval(_cfg(num_workers=2), batch_size=6, shard_index=0, shard_count=1))
    try:
        _assert_same(reference, list(it))
    finally:
        it.close()


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_eval_images_are_the_images_of_the_requested_split(split):
    from effnet_jax.data import synthetic

    batch = next(
        iter(_eval(_cfg(), split=split, batch_size=4, image_size=synthetic.SIZE, shard_index=0, shard_count=1))
    )
    expected = np.stack([synthetic.image(split, i) for i in range(4)]) / 255.0
    pixels = batch["image"][..., 0] * STD[0] + MEAN[0]
    np.testing.assert_allclose(pixels, expected, atol=1e-5)


_TWO_DEVICE_SCRIPT = """
import numpy as np, jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from effnet_jax.data import pipeline
from effnet_jax.train.config import default_data_config
cfg = default_data_config()
cfg.synthetic_examples = 64
mesh = Mesh(np.array(jax.devices()), ('data',))
batch = next(iter(pipeline.create_split(cfg, 'validation', training=False, batch_size=8,
                                        image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3, seed=0)))
out = pipeline.make_global_batch(batch, NamedSharding(mesh, PartitionSpec('data')))
shards = sorted((s.index[0].start, s.data.shape[0]) for s in out['image'].addressable_shards)
assert len(jax.devices()) == 2 and shards == [(0, 4), (4, 4)], shards
np.testing.assert_array_equal(np.asarray(out['label']), batch['label'])
print('ok')
"""


def test_make_global_batch_splits_the_batch_over_two_devices():
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", _TWO_DEVICE_SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
