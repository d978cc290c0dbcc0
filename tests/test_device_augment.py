"""Augmentation on the device: deterministic per (key, example index), exact at identity, the
geometry of an independent reference, the same on any sharding, and the same batches from the
grain path and the resident path."""

import dataclasses
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

from effnet_jax.data import augment, pipeline, sampling, transforms
from effnet_jax.train import feed, steps
from effnet_jax.train.config import default_augment_config, default_data_config, get_config
from effnet_jax.train.parallel import Parallel

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SPEC = augment.spec_from_config(default_augment_config())
_jit_prepare = jax.jit(augment.prepare_batch, static_argnums=(2, 3, 4))


_warp = jax.jit(augment.warp)


def _prepare(gray, key, spec=SPEC, first_index=0):
    # Always the same signature, so tests of one batch shape share one compiled function.
    return _jit_prepare(gray, key, spec, MEAN, STD, first_index)


def _photometric_spec():
    aug = default_augment_config()
    aug.gamma, aug.clip_levels = 0.4, False
    return augment.spec_from_config(aug)


def _gray(n=8, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def _smooth(size=33):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return 120 + 60 * np.sin(xx / 4.0) * np.cos(yy / 6.0) + 2.0 * xx


def _params(**changes):
    params = augment.identity_params()
    params.update({k: jnp.asarray(v) for k, v in changes.items()})
    return params


def test_draws_depend_only_on_the_key_and_the_example_index():
    gray, key = _gray(), jax.random.key(3)
    a = np.asarray(_prepare(gray, key))
    np.testing.assert_array_equal(a, np.asarray(_prepare(gray, key)))
    # Rows 5..7 first in another batch, told their index, get the keys, so the draws, of their
    # rows in the first batch (the pixels agree to float rounding: another place in the batch
    # may take another vector path).
    keys = jax.random.key_data(augment.example_keys(key, 8))
    np.testing.assert_array_equal(jax.random.key_data(augment.example_keys(key, 3, 5)), keys[5:])
    rolled = np.asarray(_prepare(np.roll(gray, -5, axis=0), key, SPEC, 5))
    np.testing.assert_allclose(rolled[:3], a[5:], rtol=0, atol=1e-5)
    other = np.asarray(_prepare(gray, jax.random.key(4)))
    assert all(not np.array_equal(a[i], other[i]) for i in range(len(gray)))


def test_identity_parameters_and_a_zero_range_spec_reproduce_the_input():
    img = _gray(1)[0].astype(np.float32)
    np.testing.assert_array_equal(np.asarray(_warp(jnp.asarray(img), augment.identity_params())), img)
    gray = _gray()
    host = transforms.Normalizer(MEAN, STD)(gray)  # evaluation's host normalisation
    for spec in (None, augment.AugmentSpec()):
        out = np.asarray(_prepare(gray, jax.random.key(0), spec))
        np.testing.assert_allclose(out, host, rtol=0, atol=1e-6)


def test_disabled_augmentation_gives_no_spec_and_bad_ranges_name_their_key():
    aug = default_augment_config()
    aug.enabled = False
    assert augment.spec_from_config(aug) is None
    aug = default_augment_config()
    aug.scale_min = 0.0
    with pytest.raises(ValueError, match=r"data.augment.scale_min/scale_max=0.0/1.0"):
        augment.spec_from_config(aug)
    aug = default_augment_config()
    aug.zoom_about = "corner"
    with pytest.raises(ValueError, match="data.augment.zoom_about='corner'"):
        augment.spec_from_config(aug)


def test_flip_and_quarter_turn_match_numpy():
    img = _smooth()
    flipped = np.asarray(_warp(jnp.asarray(img), _params(flip=True)))
    np.testing.assert_allclose(flipped, img[:, ::-1], atol=1e-3)
    # Positive angles turn the picture counter-clockwise as displayed (rows down, columns right).
    turned = np.asarray(_warp(jnp.asarray(img), _params(angle=90.0)))
    np.testing.assert_allclose(turned, np.rot90(img, k=1), atol=1e-2)


def test_rotation_matches_scipy_bilinear_rotation_inside_the_frame():
    img = _smooth()
    ours = np.asarray(_warp(jnp.asarray(img), _params(angle=17.0)))
    ref = scipy.ndimage.rotate(img, 17.0, reshape=False, order=1, mode="constant", cval=0.0)
    inner = np.s_[6:-6, 6:-6]  # away from the corners the rotation brings in from outside
    np.testing.assert_allclose(ours[inner], ref[inner], atol=0.05)


def test_zoom_about_the_centre_matches_scipy_zoom():
    img = _smooth(32)
    ours = np.asarray(_warp(jnp.asarray(img), _params(area=0.25)))  # half of each side, centred
    # The same map written out: output pixel centre (i + 0.5) reads source 8 + (i + 0.5) / 2 - 0.5.
    coords = 8 + (np.arange(32) + 0.5) / 2 - 0.5
    ref = scipy.ndimage.map_coordinates(img, np.meshgrid(coords, coords, indexing="ij"), order=1)
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_frame_side_rule():
    assert transforms.frame_side(224, 1.0) == 224  # no zoom: the model's size
    assert transforms.frame_side(224, 0.55) == 303  # ceil(224 / sqrt(0.55)) = ceil(302.04)
    assert transforms.frame_side(224, 0.25) == 448  # exact: no extra pixel from rounding
    assert transforms.frame_side(224, 0.55, source_side=224) == 224  # never above the source
    assert transforms.frame_side(224, 0.55, source_side=260) == 260
    assert transforms.frame_side(224, 0.55, source_side=100) == 224  # never below the model's size
    with pytest.raises(ValueError, match=r"data.augment.scale_min=0.0"):
        transforms.frame_side(224, 0.0)


def test_a_zoomed_view_keeps_the_detail_the_model_size_frame_has_lost():
    # Stripes finer than the model-size frame can hold: a view zoomed to 0.55 of the area is
    # resampled from the larger training frame and matches PIL's crop of the full-resolution
    # image; crop-and-enlarge of the model-size frame has lost them.
    size, area, full = 32, 0.55, 192
    xx = np.arange(full, dtype=np.float64)
    image = np.repeat((128 + 100 * np.sin(2 * np.pi * xx / 10.0))[None], full, axis=0).astype(np.uint8)
    side = np.sqrt(area) * full
    box = ((full - side) / 2, (full - side) / 2, (full + side) / 2, (full + side) / 2)
    ref = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, box=box), np.float32)
    im = transforms.decode_gray(image)
    frame = transforms.frame_side(size, area, transforms.source_side(image))
    assert frame == 44
    params = _params(area=area)
    view = np.asarray(augment.warp(jnp.asarray(transforms.center_resize(im, frame), jnp.float32), params, size))
    small = np.asarray(augment.warp(jnp.asarray(transforms.center_resize(im, size), jnp.float32), params))
    assert view.shape == small.shape == (size, size)
    inner = np.s_[2:-2, 2:-2]

    def corr(a):
        return np.corrcoef(a[inner].ravel(), ref[inner].ravel())[0, 1]

    def rms(a):
        return np.sqrt(np.mean((a[inner] - ref[inner]) ** 2))

    assert corr(view) > 0.85 and corr(small) < 0.6, (corr(view), corr(small))
    assert rms(view) < 0.5 * rms(small), (rms(view), rms(small))
    # The stripes keep most of the reference's contrast in the view, not in the small frame.
    assert view[inner].std() > 0.6 * ref[inner].std() > small[inner].std()


def test_photometric_changes_match_the_float_formula():
    gray = _gray(1, 16)[0].astype(np.float32)
    params = _params(brightness=0.05, contrast=1.2, gamma=0.8)
    g = 255.0 * (gray.astype(np.float64) / 255.0) ** 0.8
    m = g.mean()
    expect = (g - m) * 1.2 + m + 255.0 * 0.05
    got = np.asarray(augment.photometric(jnp.asarray(gray), params, clip=False))
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-3)
    clipped = np.asarray(augment.photometric(jnp.asarray(gray), params, clip=True))
    np.testing.assert_allclose(clipped, np.clip(expect, 0, 255), rtol=1e-5, atol=1e-3)
    assert expect.max() > 255  # the case where clipping matters is exercised


def _detector_spec():
    return dataclasses.replace(_photometric_spec(), sharpness=0.8, noise=6.0)


@pytest.mark.parametrize("spec_of", [_photometric_spec, _detector_spec], ids=["photometric", "detector"])
def test_eight_device_sharded_batch_equals_the_single_device_batch(spec_of):
    assert len(jax.devices()) == 8, "tests run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    spec = spec_of()
    gray, key = _gray(), jax.random.key(7)
    one = _prepare(jax.device_put(gray, jax.devices()[0]), key, spec)
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
    eight = _prepare(jax.device_put(gray, sharding), key, spec)
    assert len(eight.sharding.device_set) == 8
    # The same draws; the pixels agree to float rounding (one row per device compiles to other
    # vector code than eight), far below one grey level (about 0.017 after normalising).
    np.testing.assert_allclose(np.asarray(eight), np.asarray(one), rtol=0, atol=2e-6)


def test_blur_is_a_sigma_one_gaussian_with_edges_replicated():
    image = _smooth() + np.random.default_rng(0).normal(0, 20, (33, 33)).astype(np.float32)
    expect = scipy.ndimage.gaussian_filter(image.astype(np.float64), sigma=1.0, truncate=2.0, mode="nearest")
    np.testing.assert_allclose(np.asarray(jax.jit(augment.blur)(jnp.asarray(image))), expect, rtol=0, atol=1e-3)


def test_detector_sharpness_runs_from_the_blurred_image_to_twice_the_detail():
    image = jnp.asarray(_smooth() + np.random.default_rng(1).normal(0, 20, (33, 33)).astype(np.float32))
    key = jax.random.key(0)

    def look(sharpness, noise=0.0):
        params = {"sharpness": jnp.float32(sharpness), "noise": jnp.float32(noise)}
        return np.asarray(augment.detector(image, params, key, clip=False))

    np.testing.assert_array_equal(look(0.0), np.asarray(image))
    blurred = np.asarray(augment.blur(image))
    np.testing.assert_allclose(look(-1.0), blurred, rtol=0, atol=1e-3)
    np.testing.assert_allclose(look(1.0), 2 * np.asarray(image) - blurred, rtol=0, atol=1e-3)
    # Noise: zero-mean, its standard deviation the drawn level, a fresh field per key.
    diff = look(0.0, 6.0) - np.asarray(image)
    assert abs(diff.mean()) < 0.6 and 5.4 < diff.std() < 6.6
    clipped = np.asarray(augment.detector(image, {"sharpness": 1.0, "noise": 40.0}, key, clip=True))
    assert clipped.min() == 0.0 and clipped.max() == 255.0


def _data_config(balance):
    cfg = default_data_config()
    cfg.update({"name": "synthetic", "synthetic_examples": 24, "balance": balance})
    return cfg


@pytest.mark.parametrize("balance", ["none", "oversample"])
def test_grain_and_resident_paths_give_the_same_augmented_batches(balance):
    cfg, batch, size, seed = _data_config(balance), 8, 16, 5
    # The default zoom (0.7 of the area) on 64-px synthetic images: a 20-px frame for 16-px views.
    frame = pipeline.training_frame(cfg, "train", size)
    assert frame == 20
    spec = dataclasses.replace(SPEC, size=size)
    stream = iter(
        pipeline.create_split(
            cfg, "train", training=True, batch_size=batch, image_size=size, mean=MEAN, std=STD, seed=seed
        )
    )
    data = pipeline.decode_split(cfg, "train", image_size=size, shard_index=0, shard_count=1)
    indices = sampling.IndexBatches(sampling.TrainOrder(data["label"], balance, seed), data["label"], batch)
    images = jax.device_put(data["gray"])
    key = jax.random.key(seed)

    @jax.jit
    def resident(index):
        return augment.prepare_batch(jnp.take(images, index, axis=0), key, spec, MEAN, STD)

    for _ in range(5):  # past an epoch boundary (24 or 36 examples per epoch, 8 a batch)
        fed, res = next(stream), next(indices)
        assert fed["gray"].shape == (batch, frame, frame)
        np.testing.assert_array_equal(fed["gray"], data["gray"][res["index"]])
        np.testing.assert_array_equal(fed["label"], res["label"])
        prepared = np.asarray(_prepare(fed["gray"], key, spec))
        assert prepared.shape == (batch, size, size, 3)
        np.testing.assert_array_equal(prepared, resident(res["index"]))
    # The same state as grain's: either path resumes where the other stopped.
    assert indices.get_state() == stream.get_state() == {"next_index": 5}
    stream.close()


def test_resident_train_step_gathers_its_rows():
    images = jnp.asarray(_gray(6, 8))
    seen = {}

    def step_fn(state, batch, scale):
        seen.update(batch)
        return state, scale

    batch = {"index": jnp.array([4, 0, 4]), "label": jnp.array([1, 0, 1])}
    assert steps.resident_train_step("s", batch, images, step_fn=step_fn, scale=2) == ("s", 2)
    np.testing.assert_array_equal(seen["gray"], np.asarray(images)[[4, 0, 4]])
    np.testing.assert_array_equal(seen["label"], [1, 0, 1])


class _Device:
    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def test_resident_memory_rule():
    gib = 1 << 30
    # Accelerators: a quarter of the free memory of the fullest device.
    devices = [
        _Device({"bytes_limit": 8 * gib, "bytes_in_use": 0}),
        _Device({"bytes_limit": 8 * gib, "bytes_in_use": 4 * gib}),
    ]
    assert feed.resident_fits(gib, devices)[0]
    assert not feed.resident_fits(gib + 1, devices)[0]
    # No statistics (the CPU): the fixed cap.
    assert feed.resident_fits(feed.RESIDENT_CPU_CAP, [_Device(None)])[0]
    assert not feed.resident_fits(feed.RESIDENT_CPU_CAP + 1, [_Device(None)])[0]


def test_the_resident_choice_counts_the_frame_not_the_model_size(monkeypatch):
    # 24 synthetic 64-px images, 16-px views with the default zoom: 20-px frames. A cap that
    # holds the set at 16 px but not at 20 px streams it with grain; one that holds 20 px keeps it.
    config = get_config()
    config.data = _data_config("none")
    run = SimpleNamespace(image_size=16, mean=MEAN, std=STD)
    par = Parallel("jit", jax.devices()[:1])
    for cap, resident in ((24 * 16 * 16, False), (24 * 20 * 20, True)):
        monkeypatch.setattr(feed, "RESIDENT_CPU_CAP", cap)
        fed = feed.Feed(config, par, run, per_process_batch=8, num_examples=24)
        try:
            assert fed.frame == 20 and fed.resident is resident
            assert fed.augment.size == 16
            if resident:
                assert fed.images.shape == (24, 20, 20)
        finally:
            fed.close()
