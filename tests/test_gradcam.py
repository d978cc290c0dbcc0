"""Grad-CAM through the model's perturbation hook equals Grad-CAM on a network split by hand."""

import dataclasses

import jax
import numpy as np
import pytest
from PIL import Image

from effnet_jax import init_variables
from effnet_jax.inference.gradcam import gradcam, make_gradcam, overlay, save_overlay
from effnet_jax.models import EfficientNet, get_variant

SIZE = 32
TINY_BLOCKS = ("ds_r1_k3_s1_e1_c8_se0.25", "ir_r1_k3_s2_e2_c16_se0.25", "ir_r2_k5_s2_e2_c24_se0.25")


def tiny_model(num_classes):
    """A narrow three-stage EfficientNet so that the test compiles in seconds."""
    variant = dataclasses.replace(get_variant("efficientnet_b0"), blocks=TINY_BLOCKS, stem_channels=8, head_channels=32)
    model = EfficientNet(variant, num_classes=num_classes)
    variables = init_variables(model, 0, image_size=SIZE)
    # A unit-variance random classifier so that positive and negative weights both occur.
    kernel = variables["params"]["classifier"]["kernel"]
    variables["params"]["classifier"]["kernel"] = jax.random.normal(jax.random.PRNGKey(1), kernel.shape)
    return model, variables


def images(n=3, seed=2):
    return jax.random.normal(jax.random.PRNGKey(seed), (n, SIZE, SIZE, 3))


def reference_cam(model, variables, x, index):
    """Grad-CAM with the classifier re-applied by hand on the features_only head map."""

    @jax.jit
    def head_and_weights(variables, x):
        head = model.apply(variables, x, train=False, features_only=True)["head"]
        dense = variables["params"]["classifier"]

        def logit(a):
            return (a.mean(axis=(1, 2)) @ dense["kernel"] + dense["bias"])[:, index].sum()

        return head, jax.grad(logit)(head).mean(axis=(1, 2))

    head, weights = (np.asarray(a, np.float64) for a in head_and_weights(variables, x))
    return np.maximum(np.einsum("bhwc,bc->bhw", head, weights), 0.0)


@pytest.fixture(scope="module")
def softmax_model():
    return tiny_model(2)


@pytest.mark.parametrize("num_classes,index", [(1, 0), (2, 1)])
def test_gradcam_equals_hand_split_reference(num_classes, index, softmax_model):
    model, variables = tiny_model(1) if num_classes == 1 else softmax_model
    x = images()
    out = make_gradcam(model)(variables, x)
    expected = reference_cam(model, variables, x, index)
    assert expected.max() > 0  # the comparison is not between two zero maps
    np.testing.assert_allclose(np.asarray(out["cam"]), expected, atol=1e-5, rtol=1e-5)
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    np.testing.assert_allclose(np.asarray(out["logits"]), np.asarray(logits), atol=1e-5, rtol=1e-5)


def test_heatmap_shape_range_and_peak(softmax_model):
    model, variables = softmax_model
    heat = gradcam(model, variables, images(n=2))
    assert heat.shape == (2, SIZE, SIZE)
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    for h in heat:
        assert h.max() == pytest.approx(1.0) or h.max() == 0.0


def test_explicit_class_index_of_softmax_head(softmax_model):
    model, variables = softmax_model
    x = images()
    out = make_gradcam(model, class_index=0)(variables, x)
    np.testing.assert_allclose(np.asarray(out["cam"]), reference_cam(model, variables, x, 0), atol=1e-5, rtol=1e-5)


def test_overlay_png_matches_original_image_size(tmp_path):
    original = Image.fromarray((np.arange(50 * 70) % 256).astype(np.uint8).reshape(50, 70), mode="L")
    heat = np.zeros((SIZE, SIZE), np.float32)
    heat[:, SIZE // 2 :] = 1.0
    path = save_overlay(original, heat, tmp_path / "o" / "x.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (70, 50)
    blended = overlay(original, heat)
    # A cold pixel keeps its gray value; a hot pixel is tinted (not gray any more).
    gray = np.asarray(original)
    assert np.array_equal(blended[:, 0], np.repeat(gray[:, 0, None], 3, axis=1))
    assert np.abs(blended[:, -1, 0].astype(int) - blended[:, -1, 2].astype(int)).max() > 20


def test_heatmap_is_finer_than_the_head_grid_and_zero_where_the_head_map_is(softmax_model):
    model, variables = softmax_model
    out = make_gradcam(model)(variables, images(n=2))
    cam, heat = np.asarray(out["cam"]), np.asarray(out["heatmap"])
    cells = SIZE // cam.shape[1]  # input pixels per head cell
    assert cells >= 8
    # Within one head cell the guided map varies pixel by pixel; the head map alone cannot.
    block = heat[:, :cells, :cells]
    assert len(np.unique(np.round(block, 4))) > cells * cells // 2
    coarse = np.asarray(jax.image.resize(cam, heat.shape, "bilinear"))
    assert np.all(heat[coarse <= 0] == 0)


def test_predict_overlays_at_the_files_size_on_one_scale_for_every_image(tmp_path):
    from effnet_jax.inference.gradcam import SCALE_LABEL, weighted_by_probability
    from effnet_jax.inference.prediction import Preprocessor

    path = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (800, 1000), np.uint8), "L").save(path)
    model_input, shown = Preprocessor(SIZE, (0.5,) * 3, (0.5,) * 3)(str(path))
    assert model_input.shape == (SIZE, SIZE, 3) and shown.size == (1000, 800)
    heat = np.ones((SIZE, SIZE), np.float32)
    gray = np.repeat(np.asarray(shown)[..., None], 3, axis=2).astype(int)
    # A confident NORMAL barely tints the X-ray; a confident PNEUMONIA is fully coloured.
    assert np.abs(overlay(shown, weighted_by_probability(heat, 0.005)).astype(int) - gray).max() <= 2
    assert np.abs(overlay(shown, weighted_by_probability(heat, 0.99)).astype(int) - gray).max() > 50
    assert "same scale for every image" in SCALE_LABEL
