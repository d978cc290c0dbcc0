"""Gamma augmentation: the lookup table equals the float arithmetic, and old recipes keep their draws."""

import numpy as np
import pytest

from effnet_jax.data import transforms
from effnet_jax.train import config as data_config_lib


def _reference(gray, mean, std, brightness, contrast, gamma):
    g = 255.0 * (gray.astype(np.float64) / 255.0) ** gamma
    m = g.mean()
    v = np.clip((g - m) * contrast + m + 255.0 * brightness, 0, 255) / 255.0
    return (v[..., None] - np.asarray(mean)) / np.asarray(std)


@pytest.mark.parametrize("gamma", [1.0, 0.7, 1.35])
def test_gamma_table_equals_float_arithmetic(gamma):
    gray = np.random.default_rng(0).integers(0, 256, (32, 24), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    got = transforms.Normalizer(mean, std)(gray, brightness=0.05, contrast=1.1, gamma=gamma)
    np.testing.assert_allclose(got, _reference(gray, mean, std, 0.05, 1.1, gamma), rtol=0, atol=2e-5)


def test_gamma_off_keeps_every_other_draw_of_earlier_recipes():
    aug = data_config_lib.default_augment_config()
    assert aug.gamma == 0.0  # off by default: recipes written before it are unchanged
    for seed in range(20):
        params = transforms.draw_params(aug, np.random.default_rng(seed))
        u = np.random.default_rng(seed).uniform(size=9).tolist()  # what the nine draws were before gamma
        area = aug.scale_min + (aug.scale_max - aug.scale_min) * u[0]
        assert params.gamma == 1.0
        assert params.area == area and params.angle == aug.rotation * (2 * u[3] - 1)
        assert params.contrast == 1.0 + aug.contrast * (2 * u[8] - 1)


def test_gamma_draws_are_log_uniform_within_the_range():
    aug = data_config_lib.default_augment_config()
    aug.gamma = 0.3
    gammas = [transforms.draw_params(aug, np.random.default_rng(s)).gamma for s in range(400)]
    logs = np.log(gammas)
    assert logs.min() >= -0.3 and logs.max() <= 0.3
    assert logs.min() < -0.25 and logs.max() > 0.25 and abs(np.mean(logs)) < 0.05
    aug.gamma_enabled = False
    assert transforms.draw_params(aug, np.random.default_rng(0)).gamma == 1.0


def test_unclipped_table_keeps_levels_past_the_range():
    gray = np.random.default_rng(1).integers(0, 256, (32, 24), dtype=np.uint8)
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    norm = transforms.Normalizer(mean, std)
    clipped = norm.table(gray, brightness=0.2, contrast=1.2, gamma=0.8)
    free = norm.table(gray, brightness=0.2, contrast=1.2, gamma=0.8, clip=False)
    # Normalised 0..255 is [-1, 1]; +0.2 brightness and 1.2x contrast push bright levels past 1.
    assert clipped.max() == pytest.approx(1.0) and free.max() > 1.3
    inside = (clipped > -1 + 1e-6) & (clipped < 1 - 1e-6)
    np.testing.assert_allclose(free[inside], clipped[inside], rtol=0, atol=1e-6)
    assert not inside.all()


def test_zoom_about_center_keeps_the_crop_centred_and_the_other_draws():
    aug = data_config_lib.default_augment_config()
    centred = data_config_lib.default_augment_config()
    centred.zoom_about = "center"
    for seed in range(20):
        a = transforms.draw_params(aug, np.random.default_rng(seed))
        b = transforms.draw_params(centred, np.random.default_rng(seed))
        assert b.center == (0.5, 0.5) and a.center != (0.5, 0.5)
        assert (a.area, a.angle, a.flip, a.shift, a.brightness) == (b.area, b.angle, b.flip, b.shift, b.brightness)
    centred.zoom_about = "corner"
    with pytest.raises(ValueError, match="data.augment.zoom_about='corner'"):
        transforms.draw_params(centred, np.random.default_rng(0))


def test_centred_zoom_warp_is_symmetric_about_the_frame_centre():
    # A left-right symmetric image zoomed about the centre (no rotation, shift or flip) stays symmetric.
    ramp = np.abs(np.arange(64) - 31.5)
    img = np.repeat((ramp * 8).astype(np.uint8)[None], 48, axis=0)
    params = transforms.AugmentParams(area=0.6)
    out = transforms.warp(transforms.decode_gray(img), params, 40).astype(int)
    assert np.abs(out - out[:, ::-1]).max() <= 1
    assert out.min() > 0  # zoomed in: no black fill from outside the frame
