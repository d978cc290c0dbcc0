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
