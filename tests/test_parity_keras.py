"""Keras applications EfficientNetB0 weights (.h5) give Keras's logits from the same raw pixels."""

import functools
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import numpy as np
import pytest
from reference_models import relative_error

import effnet_jax


@pytest.fixture(scope="module")
def keras_b0():
    """A randomly initialised Keras B0 with BN statistics taken from the test batch, and its logits."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(64, 64, 3))
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0  # moving statistics := this batch's statistics
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype("float32"))
            layer.beta.assign(rng.uniform(-0.5, 0.5, layer.beta.shape).astype("float32"))
    # Each call is one jitted program: an eager Keras call on JAX compiles every layer's ops apart.
    _, moving = jax.jit(functools.partial(model.stateless_call, training=True))(
        [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables], pixels
    )
    for variable, value in zip(model.non_trainable_variables, moving):
        variable.assign(value)
    head = model.get_layer("predictions")  # its softmax is folded in: compare pre-softmax logits
    trunk = keras.Model(model.input, head.input)
    features, _ = jax.jit(functools.partial(trunk.stateless_call, training=False))(
        [v.value for v in trunk.trainable_variables], [v.value for v in trunk.non_trainable_variables], pixels
    )
    features = np.asarray(features)
    logits = features @ np.asarray(head.kernel) + np.asarray(head.bias)
    return model, pixels, logits


def _normalise(pixels, model):
    # Keras normalises inside the model; effnet_jax takes inputs normalised with the mean/std the
    # loaded file reports (model.variant.mean/std, on a 0-1 scale).
    return ((pixels / 255.0 - np.asarray(model.variant.mean)) / np.asarray(model.variant.std)).astype(np.float32)


def test_whole_model_h5_matches_keras(keras_b0, tmp_path):
    keras_model, pixels, reference = keras_b0
    path = tmp_path / "b0_model.h5"
    keras_model.save(path)
    model, variables = effnet_jax.create_model("tf_efficientnet_b0", pretrained=str(path))
    logits = np.asarray(jax.jit(model.apply)(variables, _normalise(pixels, model)))
    assert np.abs(reference).max() > 0.5
    assert relative_error(logits, reference) <= 1e-4


def test_weights_only_h5_matches_whole_model_h5(keras_b0, tmp_path):
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    keras_model, _, _ = keras_b0
    weights_only, whole = tmp_path / "b0_weights.h5", tmp_path / "b0_model.h5"
    with h5py.File(weights_only, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, keras_model)
    keras_model.save(whole)
    _, a = effnet_jax.create_model("tf_efficientnet_b0", pretrained=str(weights_only))
    _, b = effnet_jax.create_model("tf_efficientnet_b0", pretrained=str(whole))
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_imagenet_normalisation_is_reported_for_keras_imagenet_statistics():
    from effnet_jax.models.variants import IMAGENET_MEAN, IMAGENET_STD
    from effnet_jax.weights.name_maps import keras_input_normalisation

    # A weights='imagenet' Keras model stores ImageNet mean/variance and divides by sqrt(std) once more.
    tensors = {"normalization/mean": np.array(IMAGENET_MEAN), "normalization/variance": np.square(IMAGENET_STD)}
    mean, std = keras_input_normalisation(tensors)
    np.testing.assert_allclose(mean, IMAGENET_MEAN)
    np.testing.assert_allclose(std, np.asarray(IMAGENET_STD) ** 1.5)
