"""The augmentation draws: switches leave the other draws alone, gamma is log-uniform, centred zoom stays centred."""

import jax
import jax.numpy as jnp
import numpy as np

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
