"""The flax EfficientNet family: structure, options and the two depthwise formulations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, random_variables

import effnet_jax
from effnet_jax.models import build_model, get_variant, layers, list_variants
from effnet_jax.models.layers import conv_padding, depthwise_conv, pointwise_conv, spatial_padding
from effnet_jax.models.variants import make_divisible, parse_block_string


def _param_count(model) -> int:
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    return sum(x.size for x in jax.tree_util.tree_leaves(shapes["params"]))


@pytest.mark.parametrize("name", list_variants())
def test_parameter_count_equals_timm(name):
    import timm

    reference = timm.create_model(name, pretrained=False)
    assert _param_count(build_model(name)) == sum(p.numel() for p in reference.parameters())


def test_family_has_every_variant_with_its_settings():
    names = set(list_variants())
    for i in range(8):
        assert {f"efficientnet_b{i}", f"tf_efficientnet_b{i}"} <= names
    for i in range(5):
        assert {f"efficientnet_lite{i}", f"tf_efficientnet_lite{i}"} <= names
    assert get_variant("tf_efficientnet_b7").resolution == 600
    assert get_variant("tf_efficientnet_b2").padding == "same"
    assert get_variant("efficientnet_b2").bn_eps == 1e-5
    assert get_variant("tf_efficientnet_lite0").mean == (0.5, 0.5, 0.5)
    assert get_variant("timm/efficientnet_b0.ra_in1k").name == "efficientnet_b0"


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(ValueError, match="efficientnet_b9.*Known: .*efficientnet_b0"):
        get_variant("efficientnet_b9")


def test_block_strings_parse_and_reject_garbage():
    assert parse_block_string("ir_r2_k3_s2_e6_c24_se0.25") == {
        "type": "ir",
        "r": 2,
        "k": 3,
        "s": 2,
        "e": 6.0,
        "c": 24,
        "se": 0.25,
    }
    with pytest.raises(ValueError, match="unknown block type 'xx'"):
        parse_block_string("xx_r1_k3_s1_e1_c16")
    with pytest.raises(ValueError, match=r"missing fields \['c'\]"):
        parse_block_string("ir_r1_k3_s1_e6")


def test_channel_rounding_follows_the_reference_rule():
    assert make_divisible(32 * 1.1) == 32
    assert make_divisible(1280 * 1.1) == 1408
    assert make_divisible(24 * 1.4) == 32  # 33.6 -> 32 (within 10%)
    assert make_divisible(10) == 16  # 8 would lose over 10%


def test_same_padding_is_tensorflows_rule():
    assert conv_padding(64, 3, 2, "same") == (0, 1)
    assert conv_padding(65, 3, 2, "same") == (1, 1)
    assert conv_padding(64, 5, 1, "same") == (2, 2)
    assert conv_padding(64, 3, 2, "symmetric") == (1, 1)


# The kernel gradient's two reductions: rows too, in one chunk of 3 or two of 10 images (small
# layers), and the batch alone (a layer higher than layers.ROW_REDUCE_MAX_SIZE).
@pytest.mark.parametrize("shape", [(3, 15, 18, 8), (20, 15, 18, 4), (2, 33, 30, 4)])
@pytest.mark.parametrize("mode", ["same", "symmetric"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [3, 5])
def test_depthwise_formulations_agree_forward_and_backward(kernel, stride, mode, shape):
    # Odd and even sizes, so that SAME pads asymmetrically and strided windows end early.
    assert (shape[1] <= layers.ROW_REDUCE_MAX_SIZE) == (shape[1] < 30)
    rng = np.random.default_rng(kernel * 10 + stride)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, 1, shape[-1])), jnp.float32)
    pad = spatial_padding(x.shape, kernel, stride, mode)

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w)))

    native = lambda x, w: depthwise_conv(x, w, stride, pad, "native")  # noqa: E731
    shifts = lambda x, w: depthwise_conv(x, w, stride, pad, "shifts")  # custom VJP  # noqa: E731
    plain = lambda x, w: layers._shifts_forward(x, w, stride, tuple(pad))  # autodiff of the slices  # noqa: E731
    assert_close(jax.jit(shifts)(x, w), native(x, w))
    want = jax.grad(loss(native), (0, 1))(x, w)
    for conv in (shifts, plain):
        got = jax.jit(jax.grad(loss(conv), (0, 1)))(x, w)
        assert_close(got[0], want[0])  # input gradient
        assert_close(got[1], want[1])  # kernel gradient


@pytest.mark.parametrize("channels", [(8, 48), (48, 8)])  # expansion and projection: either operand is narrower
def test_pointwise_conv_gradients_equal_autodiff_of_the_matmul(channels):
    c, d = channels
    rng = np.random.default_rng(c)
    x = jnp.asarray(rng.standard_normal((3, 7, 9, c)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((c, d)), jnp.float32)

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w)))

    plain = lambda x, w: jnp.einsum("nhwc,cd->nhwd", x, w)  # noqa: E731
    assert jax.default_backend() == "cpu"  # where pointwise_conv takes its own kernel gradient
    assert_close(jax.jit(pointwise_conv)(x, w), plain(x, w))
    got = jax.jit(jax.grad(loss(pointwise_conv), (0, 1)))(x, w)
    want = jax.grad(loss(plain), (0, 1))(x, w)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])
    # bfloat16 activations: the kernel gradient sums every pixel in float32, stored as bfloat16.
    gb = jax.grad(lambda w: jnp.sum(pointwise_conv(x.astype(jnp.bfloat16), w).astype(jnp.float32)))(
        w.astype(jnp.bfloat16)
    )
    assert gb.dtype == jnp.bfloat16
    assert_close(gb.astype(jnp.float32), jax.grad(lambda w: jnp.sum(plain(x, w)))(w), tol=1e-2)


def test_silu_recomputing_its_sigmoid_equals_autodiff_of_nn_silu():
    x = jnp.asarray(np.random.default_rng(0).standard_normal(1000) * 6, jnp.float32)
    assert_close(layers.silu(x), jax.nn.silu(x))
    loss = lambda f: lambda x: jnp.sum(jnp.sin(3 * f(x)))  # noqa: E731
    assert_close(jax.jit(jax.grad(loss(layers.silu)))(x), jax.grad(loss(jax.nn.silu))(x))
    # Second derivatives too: Grad-CAM and any gradient penalty differentiate the backward.
    assert_close(
        jax.grad(lambda x: jnp.sum(jax.grad(loss(layers.silu))(x)))(x),
        jax.grad(lambda x: jnp.sum(jax.grad(loss(jax.nn.silu))(x)))(x),
        tol=1e-4,
    )


def test_depthwise_kernel_gradient_in_bfloat16_accumulates_in_float32():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 12, 12, 16)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((3, 3, 1, 16)), jnp.bfloat16)
    pad = spatial_padding(x.shape, 3, 1, "symmetric")
    g = jax.grad(lambda w: jnp.sum(depthwise_conv(x, w, 1, pad, "shifts").astype(jnp.float32)))(w)
    assert g.dtype == jnp.bfloat16
    ref = jax.grad(lambda w: jnp.sum(depthwise_conv(x.astype(jnp.float32), w, 1, pad, "native")))(w.astype(jnp.float32))
    assert_close(g.astype(jnp.float32), ref, tol=1e-2)


@pytest.fixture(scope="module")
def lite0():
    # Any weights do for these tests; drawn from the shapes, they skip compiling the initialisation.
    model = build_model("efficientnet_lite0", num_classes=2)
    return model, random_variables(model)


def test_features_expose_every_stage_and_pooled(lite0):
    model, variables = lite0
    features = jax.eval_shape(lambda: model.apply(variables, jnp.zeros((1, 64, 64, 3)), features_only=True))
    assert features["stem"].shape == (1, 32, 32, 32)
    assert [features[f"stage_{i}"].shape[-1] for i in range(7)] == [16, 24, 40, 80, 112, 192, 320]
    assert features["stage_6"].shape[1:3] == (2, 2)
    assert features["head"].shape == (1, 2, 2, 1280)
    assert features["pooled"].shape == (1, 1280)


def test_head_sizes():
    x = jnp.zeros((2, 32, 32, 3))
    for classes, shape in [(1, (2, 1)), (2, (2, 2)), (0, (2, 1280))]:
        model = build_model("efficientnet_lite0", num_classes=classes)
        assert jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x)[0]).shape == shape


def test_bf16_compute_keeps_float32_parameters_and_statistics(lite0):
    model, variables = lite0
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 64, 3)), jnp.float32)
    bf16 = model.clone(dtype=jnp.bfloat16)
    logits, state = jax.jit(
        lambda v, x: bf16.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(0)})
    )(variables, x)
    assert logits.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(state))
    reference = jax.jit(model.apply)(variables, x)
    np.testing.assert_allclose(
        jax.jit(bf16.apply)(variables, x), reference, atol=0.05 * float(jnp.abs(reference).max()) + 0.05
    )


def test_frozen_norms_use_and_keep_running_statistics(lite0):
    model, variables = lite0
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 64, 64, 3)), jnp.float32)
    frozen = model.clone(frozen_norms=(r"^bn1$", r"^blocks_[0-2]_"))
    _, state = jax.jit(
        lambda v, x: frozen.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(0)})
    )(variables, x)
    before, after = variables["batch_stats"], state["batch_stats"]
    for name in ["bn1", "blocks_0_0", "blocks_2_1"]:
        jax.tree_util.tree_map(np.testing.assert_array_equal, before[name], after[name])
    assert not np.array_equal(before["blocks_3_0"]["bn1"]["mean"], after["blocks_3_0"]["bn1"]["mean"])
    assert not np.array_equal(before["bn2"]["var"], after["bn2"]["var"])


def test_stochastic_depth_and_dropout_only_in_training(lite0):
    base, variables = lite0
    model = base.clone(drop_path_rate=0.5, drop_rate=0.5)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 32, 32, 3)), jnp.float32)
    np.testing.assert_array_equal(jax.jit(model.apply)(variables, x), jax.jit(base.apply)(variables, x))
    train = jax.jit(
        lambda seed: model.apply(
            variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(seed)}
        )[0]
    )
    np.testing.assert_array_equal(train(0), train(0))
    assert not np.allclose(train(0), train(1))


def test_the_test_network_resolves_but_is_not_listed():
    # Tests of the machinery train it; users never see it (no weights exist for it).
    assert "efficientnet_test" not in list_variants()
    variant = get_variant("efficientnet_test")
    assert [len(stage) for stage in variant.block_defs()] == [1] * 7
    assert (variant.scaled_stem(), variant.scaled_head()) == (8, 320)


def test_loading_weights_computes_only_the_reinitialised_head_and_matches_a_whole_initialisation(tmp_path):
    from effnet_jax.factory import load_pretrained
    from effnet_jax.models.efficientnet import init_some_variables, variable_shapes
    from effnet_jax.models.variants import TEST_VARIANT
    from effnet_jax.weights.loading import LoadReport, save_converted

    # A 1000-class file of the test network: fine-tuning for 2 classes re-initialises the classifier.
    imagenet = random_variables(build_model(TEST_VARIANT.name, num_classes=1000), 5)
    report = LoadReport([], [], "made here", "flax")
    save_converted(tmp_path / "w", TEST_VARIANT, 1000, imagenet, report, TEST_VARIANT.mean, TEST_VARIANT.std)

    model, fast = effnet_jax.create_model(TEST_VARIANT.name, num_classes=2, pretrained=str(tmp_path / "w"), rng=3)
    _, slow, report = load_pretrained(model, effnet_jax.init_variables(model, 3), str(tmp_path / "w"))
    assert report.reinitialised == ["params/classifier/bias", "params/classifier/kernel"]
    assert jax.tree.structure(fast) == jax.tree.structure(slow)
    jax.tree.map(np.testing.assert_array_equal, fast, slow)
    assert fast["params"]["classifier"]["kernel"].shape == (TEST_VARIANT.scaled_head(), 2)
    np.testing.assert_array_equal(fast["params"]["conv_head"]["kernel"], imagenet["params"]["conv_head"]["kernel"])
    # Shapes come without computing anything; a chosen key alone equals the whole initialisation's.
    shapes = variable_shapes(model)
    assert jax.tree.map(lambda s: (s.shape, s.dtype), shapes) == jax.tree.map(lambda x: (x.shape, x.dtype), slow)
    key = ("params", "classifier", "kernel")
    np.testing.assert_array_equal(init_some_variables(model, [key], 3)[key], slow["params"]["classifier"]["kernel"])
