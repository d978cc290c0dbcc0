"""Test-time augmentation averages probabilities over exactly the views it names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effnet_jax.inference.tta import TTAConfig, parse_tta, predict_probs, tta_views


def left_half_logit(images):
    """A stand-in model whose single logit is the mean of the left half: not flip-invariant."""
    w = images.shape[2]
    return images[:, :, : w // 2, :].mean(axis=(1, 2, 3))[:, None]


def test_parse_tta_specs():
    assert parse_tta("none") == TTAConfig()
    assert parse_tta("flip") == TTAConfig(flip=True)
    assert parse_tta("flip+crops@0.8") == TTAConfig(flip=True, crops=True, crop_fraction=0.8)
    assert parse_tta("crops,flip").num_views == 12
    assert parse_tta(parse_tta("flip+crops@0.8").spec()) == TTAConfig(flip=True, crops=True, crop_fraction=0.8)
    with pytest.raises(ValueError, match="unknown part 'rotate'"):
        parse_tta("flip+rotate")
    with pytest.raises(ValueError, match="crop_fraction"):
        parse_tta("crops@1.5")


def test_flip_averages_the_two_views_exactly():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 3))
    got = predict_probs(left_half_logit, x, "flip")
    expected = (jax.nn.sigmoid(left_half_logit(x)[:, 0]) + jax.nn.sigmoid(left_half_logit(x[:, :, ::-1])[:, 0])) / 2
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_flip_on_a_mirror_symmetric_input_changes_nothing():
    half = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 4, 3))
    symmetric = jnp.concatenate([half, half[:, :, ::-1]], axis=2)
    np.testing.assert_array_equal(
        np.asarray(predict_probs(left_half_logit, symmetric, "flip")),
        np.asarray(predict_probs(left_half_logit, symmetric, "none")),
    )


def test_views_are_image_corners_centre_and_mirrors():
    x = jnp.arange(2 * 8 * 8 * 1, dtype=jnp.float32).reshape(2, 8, 8, 1)
    views = tta_views(x, TTAConfig(flip=True, crops=True, crop_fraction=1.0))
    assert views.shape == (12, 2, 8, 8, 1)
    np.testing.assert_array_equal(np.asarray(views[0]), np.asarray(x))
    # A full-size "crop" resizes to itself; the second half mirrors the first.
    np.testing.assert_allclose(np.asarray(views[1:6]), np.repeat(np.asarray(x)[None], 5, axis=0), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(views[6:]), np.asarray(views[:6])[:, :, :, ::-1])


def test_softmax_head_probabilities():
    def two_logits(images):
        z = left_half_logit(images)
        return jnp.concatenate([jnp.zeros_like(z), z], axis=1)

    x = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 3))
    np.testing.assert_allclose(
        np.asarray(predict_probs(two_logits, x, "crops")),
        np.asarray(predict_probs(left_half_logit, x, "crops")),
        rtol=1e-6,
    )
