"""The augmentation draws: switches leave the other draws alone, gamma is log-uniform, centred zoom stays centred,
detector draws stay in their ranges and bad ranges name their key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effnet_jax.data import augment
from effnet_jax.train import config as data_config_lib

KEYS = jax.random.split(jax.random.key(0), 64)


def _draws(aug, keys=KEYS):
    spec = augment.spec_from_config(aug)
    return jax.jit(jax.vmap(lambda k: augment.draw(spec, k)))(keys)


def test_switching_gamma_on_keeps_every_other_draw():
    aug = data_config_lib.default_augment_config()
    assert aug.gamma == 0.0  # off by default
    off = _draws(aug)
    aug.gamma = 0.3
    on = _draws(aug)
    np.testing.assert_array_equal(off["gamma"], 1.0)
    assert not np.allclose(on["gamma"], 1.0)
    for name in ("area", "angle", "flip", "brightness", "contrast"):
        np.testing.assert_array_equal(on[name], off[name], err_msg=name)


def test_gamma_draws_are_log_uniform_within_the_range():
    aug = data_config_lib.default_augment_config()
    aug.gamma = 0.3
    gammas = np.asarray(_draws(aug, jax.random.split(jax.random.key(1), 400))["gamma"])
    logs = np.log(gammas)
    assert logs.min() >= -0.3 - 1e-6 and logs.max() <= 0.3 + 1e-6
    assert logs.min() < -0.25 and logs.max() > 0.25 and abs(np.mean(logs)) < 0.05
    aug.gamma_enabled = False
    assert augment.spec_from_config(aug).gamma == 0.0


def test_zoom_about_center_keeps_the_crop_centred_and_the_other_draws():
    aug = data_config_lib.default_augment_config()
    centred = data_config_lib.default_augment_config()
    centred.zoom_about = "center"
    a, b = _draws(aug), _draws(centred)
    np.testing.assert_array_equal(b["center"][0], 0.5)
    np.testing.assert_array_equal(b["center"][1], 0.5)
    assert not np.allclose(a["center"][0], 0.5)
    for name in ("area", "angle", "flip", "brightness"):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # A random centre keeps the whole crop inside the frame.
    half = 0.5 * np.sqrt(np.asarray(a["area"]))
    for c in a["center"]:
        assert np.all(np.asarray(c) >= half - 1e-6) and np.all(np.asarray(c) <= 1 - half + 1e-6)


def test_centred_zoom_warp_is_symmetric_about_the_frame_centre():
    # A left-right symmetric image zoomed about the centre (no rotation, shift or flip) stays symmetric.
    ramp = np.abs(np.arange(40) - 19.5)
    img = np.repeat((ramp * 8 + 20)[None], 40, axis=0).astype(np.float32)
    params = augment.identity_params()
    params["area"] = jnp.float32(0.6)
    out = np.asarray(jax.jit(augment.warp)(jnp.asarray(img), params))
    np.testing.assert_allclose(out, out[:, ::-1], atol=1e-3)
    assert out.min() > 0  # zoomed in: no black fill from outside the frame


def test_detector_augmentation_is_off_by_default_and_leaves_the_other_draws_and_pixels():
    aug = data_config_lib.default_augment_config()
    assert (aug.sharpness, aug.noise) == (0.0, 0.0)
    off = augment.spec_from_config(aug, 16)
    assert not off.detector
    aug.sharpness, aug.noise = 0.6, 5.0
    on = augment.spec_from_config(aug, 16)
    assert (on.sharpness, on.noise, on.detector) == (0.6, 5.0, True)
    for name, a in _draws(aug).items():
        b = _draws(data_config_lib.default_augment_config())[name]
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
    # The warp and levels are the same; the detector's look is what differs.
    gray = jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 16)).astype(np.float32))
    key = jax.random.key(4)
    plain = np.asarray(augment.augment_one(gray, key, off))
    looked = np.asarray(augment.augment_one(gray, key, on))
    assert not np.allclose(plain, looked)
    draws = augment.draw_detector(on, key)
    expect = augment.detector(jnp.asarray(plain), draws, jax.random.fold_in(key, augment._NOISE_STREAM))
    np.testing.assert_allclose(looked, np.asarray(expect), rtol=0, atol=1e-4)


def test_detector_draws_cover_their_ranges():
    aug = data_config_lib.default_augment_config()
    aug.sharpness, aug.noise = 0.8, 6.0
    spec = augment.spec_from_config(aug)
    draws = jax.jit(jax.vmap(lambda k: augment.draw_detector(spec, k)))(jax.random.split(jax.random.key(2), 400))
    sharp, noise = np.asarray(draws["sharpness"]), np.asarray(draws["noise"])
    assert -0.8 <= sharp.min() < -0.7 and 0.7 < sharp.max() <= 0.8
    assert 0.0 <= noise.min() < 0.5 and 5.5 < noise.max() <= 6.0
    aug.sharpness_enabled = aug.noise_enabled = False
    assert not augment.spec_from_config(aug).detector


@pytest.mark.parametrize(
    "key, value",
    [
        ("sharpness", 1.5),
        ("sharpness", -0.1),
        ("sharpness", float("nan")),
        ("noise", -1.0),
        ("noise", float("inf")),
        ("hflip", 1.5),
        ("rotation", float("nan")),
        ("contrast", -0.1),
        ("translate", 0.9),
        ("gamma", float("inf")),
        ("rotation", -5.0),
        ("erase", 1.2),
        ("erase_area", 0.01),
        ("erase_area", float("nan")),
        ("haze", 1.5),
        ("haze", float("nan")),
    ],
)
def test_bad_augmentation_ranges_are_refused_before_a_run_starts_naming_their_key(key, value):
    config = data_config_lib.get_config()
    config.data.augment[key] = value
    with pytest.raises(ValueError, match=rf"^config\.data\.augment\.{key}="):
        data_config_lib.validate_config(config)
    config.data.augment.enabled = False  # no augmentation: its ranges are never read
    data_config_lib.validate_config(config)


def test_random_erasing_is_off_by_default_and_fills_one_rectangle_of_its_drawn_size():
    aug = data_config_lib.default_augment_config()
    assert aug.erase == 0.0 and not augment.spec_from_config(aug, 32).erasing
    off = augment.spec_from_config(aug, 32)
    aug.erase, aug.erase_area = 1.0, 0.3
    on = augment.spec_from_config(aug, 32)
    for name, a in _draws(aug).items():  # the warp and level draws are those of a recipe without it
        np.testing.assert_array_equal(np.asarray(a), np.asarray(_draws(data_config_lib.default_augment_config())[name]))
    gray = jnp.asarray(np.random.default_rng(1).integers(60, 200, (32, 32)).astype(np.float32))
    for seed in range(20):
        key = jax.random.key(seed)
        plain = np.asarray(augment.augment_one(gray, key, off))
        erased = np.asarray(augment.augment_one(gray, key, on))
        box = {k: float(v) for k, v in augment.draw_erase(on, key, 32).items()}
        top, left, h, w = (int(box[k]) for k in ("top", "left", "height", "width"))
        assert 0 <= top and top + h <= 32 and 0 <= left and left + w <= 32
        # Rounding a side moves the area by at most a side's length.
        assert 0.02 * 1024 - (h + w) <= h * w <= 0.3 * 1024 + (h + w)
        outside = np.ones((32, 32), bool)
        outside[top : top + h, left : left + w] = False
        np.testing.assert_array_equal(erased[outside], plain[outside])
        assert (erased[~outside] != plain[~outside]).mean() > 0.9  # noise, not the image
        assert abs(erased[~outside].mean() - plain.mean()) < 4 * plain.std() / np.sqrt(h * w) + 1
    # The probability is the share of examples erased.
    aug.erase = 0.25
    spec = augment.spec_from_config(aug, 32)
    hits = jax.vmap(lambda k: augment.draw_erase(spec, k, 32)["on"])(jax.random.split(jax.random.key(3), 2000))
    assert 0.22 < float(np.mean(hits)) < 0.28
    aug.erase_enabled = False
    assert not augment.spec_from_config(aug, 32).erasing


def test_haze_is_off_by_default_and_veils_fine_detail_keeping_the_mean_level():
    aug = data_config_lib.default_augment_config()
    assert aug.haze == 0.0 and not augment.spec_from_config(aug, 64).hazy
    aug.brightness_enabled = aug.contrast_enabled = False  # the levels after it: checked alone
    off = augment.spec_from_config(aug, 64)
    aug.haze = 1.0
    on = augment.spec_from_config(aug, 64)
    for name, a in _draws(aug).items():  # the warp and level draws are those of a recipe without it
        aug.haze_enabled = False
        np.testing.assert_array_equal(np.asarray(a), np.asarray(_draws(aug)[name]))
        aug.haze_enabled = True
    # Ribs: a stripe pattern (period 6 px) over a smooth gradient, grey levels 40..220.
    rows, cols = np.mgrid[0:64, 0:64].astype(np.float32)
    gray = jnp.asarray(60 + 2 * rows + 40 * (np.sin(2 * np.pi * cols / 6) > 0))
    amounts = []
    for seed in range(12):
        key = jax.random.key(seed)
        amount = float(augment.draw_haze(on, key))
        amounts.append(amount)
        plain = np.asarray(augment.augment_one(gray, key, off))
        hazed = np.asarray(augment.augment_one(gray, key, on))
        blurred = np.asarray(augment.wide_blur(jnp.asarray(plain), augment.HAZE_SIGMA * 64))
        # Exactly the blend, with the blur carrying no stripe: the detail shrinks by 1 - amount.
        np.testing.assert_allclose(hazed, plain + amount * (blurred - plain), atol=1e-3)
        centre = (slice(16, 48), slice(16, 48))
        assert np.std(np.diff(blurred[centre], axis=1)) < 0.05 * np.std(np.diff(plain[centre], axis=1))
        assert abs(hazed[centre].mean() - plain[centre].mean()) < 1.0
    assert 0 <= min(amounts) and max(amounts) <= 1.0 and len(set(amounts)) == 12
    # The blur is a normalised Gaussian: a flat image passes unchanged.
    flat = jnp.full((40, 40), 97.0)
    np.testing.assert_allclose(np.asarray(augment.wide_blur(flat, 5.0)), 97.0, rtol=1e-6)
    aug.haze_enabled = False
    assert not augment.spec_from_config(aug, 64).hazy


def test_class_contrast_flattens_only_the_classes_it_names_and_keeps_every_other_draw():
    aug = data_config_lib.default_augment_config()
    assert aug.class_contrast == ()  # off by default
    aug.contrast = 0.3
    aug.brightness = 0.0  # the levels' mean then stays where the contrast left it
    aug.clip_levels = False
    off = augment.spec_from_config(aug, 64)
    aug.class_contrast = (0.5, 1.0)
    on = augment.spec_from_config(aug, 64)
    assert on.photometric and on.class_contrast == (0.5, 1.0)
    rows, cols = np.mgrid[0:64, 0:64].astype(np.float32)
    gray = jnp.asarray(60 + 2 * rows + 40 * (np.sin(2 * np.pi * cols / 6) > 0))
    factors = []
    for seed in range(12):
        key = jax.random.key(seed)
        plain = np.asarray(augment.augment_one(gray, key, off))
        # Class 1's bound is 1: its factor is exactly 1, the view exactly the one without it.
        np.testing.assert_array_equal(np.asarray(augment.augment_one(gray, key, on, 1)), plain)
        flat = np.asarray(augment.augment_one(gray, key, on, 0))
        factor = float(augment.draw_class_contrast(on, key, 0))
        factors.append(factor)
        # Class 0: the deviation from the view's mean shrinks by the drawn factor, the mean stays.
        np.testing.assert_allclose(flat - flat.mean(), factor * (plain - plain.mean()), atol=2e-3)
        np.testing.assert_allclose(flat.mean(), plain.mean(), atol=2e-3)
    assert 0.5 <= min(factors) and max(factors) <= 1.0 and len(set(factors)) == 12
    # A batch draws per row by its labels, as one example at a time does.
    keys = augment.example_keys(jax.random.key(7), 2)
    batch = augment.prepare_batch(
        jnp.stack([gray, gray]).astype(jnp.uint8), jax.random.key(7), on, MEAN3, STD3, labels=jnp.array([0, 1])
    )
    for i, label in enumerate((0, 1)):
        one = augment.normalise(
            augment.augment_one(gray.astype(jnp.uint8).astype(jnp.float32), keys[i], on, label), MEAN3, STD3
        )
        np.testing.assert_allclose(np.asarray(batch[i]), np.asarray(one), atol=1e-5)
    with pytest.raises(ValueError, match="needs the batch's labels"):
        augment.prepare_batch(jnp.stack([gray]).astype(jnp.uint8), jax.random.key(7), on, MEAN3, STD3)


MEAN3, STD3 = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.mark.parametrize("value", [(0.0, 1.0), (0.7, 1.2), (0.7, float("nan")), ("a", 1.0), (True, 1.0)])
def test_class_contrast_out_of_range_is_refused_naming_the_key(value):
    aug = data_config_lib.default_augment_config()
    aug.class_contrast = value
    with pytest.raises(ValueError, match=r"data\.augment\.class_contrast="):
        augment.spec_from_config(aug)


def test_class_contrast_needs_one_bound_per_class():
    aug = data_config_lib.default_augment_config()
    aug.class_contrast = (0.7, 1.0, 1.0)
    spec = augment.spec_from_config(aug)
    with pytest.raises(ValueError, match=r"config\.data\.augment\.class_contrast=.*3 bounds for 2 classes"):
        augment.check_class_count(spec, ("NORMAL", "PNEUMONIA"))
    augment.check_class_count(augment.spec_from_config(aug), ("A", "B", "C"))  # three classes: fine
