"""A seed ensemble (LogitEnsemble) is applied like one model: the mean of its members' logits, Grad-CAM over all of them."""

import jax
import numpy as np
import pytest
from test_gradcam import SIZE, images, reference_cam, tiny_model

from effnet_jax import init_variables
from effnet_jax.inference.gradcam import make_gradcam
from effnet_jax.models.ensemble import LogitEnsemble, member_axis, stack_members


@pytest.fixture(scope="module")
def members():
    """One tiny architecture, two different sets of weights (other init seeds, random classifiers)."""
    model, first = tiny_model(2)
    second = init_variables(model, 7, image_size=SIZE)
    kernel = second["params"]["classifier"]["kernel"]
    second["params"]["classifier"]["kernel"] = jax.random.normal(jax.random.PRNGKey(8), kernel.shape)
    return model, [first, second]


def test_the_ensembles_logits_are_the_mean_of_its_members_logits(members):
    model, variables = members
    x = images(4)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    each = [np.asarray(apply(v, x), np.float64) for v in variables]
    assert not np.allclose(each[0], each[1], atol=1e-3)  # the members really differ
    ensemble = LogitEnsemble(model, 2)
    got = np.asarray(jax.jit(lambda v, x: ensemble.apply(v, x, train=False))(stack_members(variables), x))
    assert got.shape == (4, 2)
    np.testing.assert_allclose(got, (each[0] + each[1]) / 2, rtol=1e-5, atol=1e-6)
    assert member_axis(ensemble) == 2 and member_axis(model) is None
    assert (ensemble.num_classes, ensemble.variant) == (model.num_classes, model.variant)


def test_features_come_per_member_and_clone_changes_the_member_architecture(members):
    model, variables = members
    x = images(2)
    ensemble = LogitEnsemble(model, 2)
    stacked = stack_members(variables)
    heads = jax.jit(lambda v: ensemble.apply(v, x, features_only=True)["head"])(stacked)
    member_head = jax.jit(lambda v: model.apply(v, x, features_only=True)["head"])
    for i, v in enumerate(variables):
        np.testing.assert_allclose(heads[i], member_head(v), rtol=1e-5, atol=1e-6)
    shifted = ensemble.clone(depthwise_impl="shifts")
    assert isinstance(shifted, LogitEnsemble) and shifted.depthwise_impl == "shifts" and shifted.size == 2
    logits = [jax.jit(lambda v, m=m: m.apply(v, x))(stacked) for m in (shifted, ensemble)]
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-4, atol=1e-5)


def test_wrong_member_counts_and_training_are_refused(members):
    model, variables = members
    with pytest.raises(ValueError, match="at least two members"):
        LogitEnsemble(model, 1)
    with pytest.raises(ValueError, match="leading axis of 3"):
        LogitEnsemble(model, 3).apply(stack_members(variables), images(1))
    with pytest.raises(ValueError, match="for inference"):
        LogitEnsemble(model, 2).apply(stack_members(variables), images(1), train=True)


def test_gradcam_of_an_ensemble_sums_over_every_members_channels(members):
    model, variables = members
    x = images(3)
    cam_fn = make_gradcam(LogitEnsemble(model, 2))  # compiled once, for both calls below
    got = cam_fn(stack_members(variables), x)
    # The mean logit's gradient on member m's map is half of that member's own: the map before
    # the ReLU is the mean of the members' maps before theirs.
    before_relu = []
    head_fn = jax.jit(lambda v: model.apply(v, x, features_only=True)["head"])
    for v in variables:
        head = np.asarray(head_fn(v), np.float64)
        dense = v["params"]["classifier"]

        def logit(a, dense=dense):
            return (a.mean(axis=(1, 2)) @ dense["kernel"] + dense["bias"])[:, 1].sum()

        weights = np.asarray(jax.grad(logit)(head.astype(np.float32)), np.float64).mean(axis=(1, 2))
        before_relu.append(np.einsum("bhwc,bc->bhw", head, weights))
    expected = np.maximum((before_relu[0] + before_relu[1]) / 2, 0.0)
    np.testing.assert_allclose(got["cam"], expected, rtol=1e-4, atol=1e-6)
    assert got["cam"].shape == (3, *expected.shape[1:]) and np.ptp(expected) > 0
    # Two copies of one model: the ensemble's map is that model's map.
    twins = cam_fn(stack_members([variables[0]] * 2), x)
    np.testing.assert_allclose(twins["cam"], reference_cam(model, variables[0], x, 1), rtol=1e-4, atol=1e-6)
