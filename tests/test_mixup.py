"""mixup in the train step: partners are neighbours, and the loss is the lam-blend of both labels' losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import machinery_config, step_setting

from effnet_jax.train import losses, steps
from effnet_jax.train.config import validate_config


def test_partners_are_neighbours_and_an_odd_last_example_is_its_own():
    assert steps.mixup_partners(6).tolist() == [1, 0, 3, 2, 5, 4]
    assert steps.mixup_partners(5).tolist() == [1, 0, 3, 2, 4]
    assert steps.mixup_partners(1).tolist() == [0]


@pytest.mark.parametrize("alpha", [-0.2, float("inf"), float("nan")])
def test_a_negative_or_infinite_alpha_is_refused_naming_its_key(alpha):
    with pytest.raises(ValueError, match=rf"config.mixup_alpha={alpha!r}: expected a finite number >= 0"):
        validate_config(machinery_config(mixup_alpha=alpha))


def test_the_step_loss_is_the_lam_blend_of_the_losses_of_both_labels_on_blended_images():
    config = machinery_config(**{"model.drop_rate": 0.0, "model.drop_path_rate": 0.0, "mixup_alpha": 0.4})
    model, frozen, tx, state, batch = step_setting(config)
    weights = jnp.array([2.0, 0.5])

    def step(alpha):
        fn = steps.bound_train_step(config, model=model, tx=tx, frozen=frozen, class_weights=weights)
        return jax.jit(lambda s, b: fn(s, b, mixup_alpha=alpha))(state, batch)[1]

    rng = jax.random.fold_in(state.rng, state.step)
    lam = jax.random.beta(jax.random.fold_in(rng, steps.MIXUP_STREAM), 0.4, 0.4)
    assert 0.0 < float(lam) < 1.0
    partner = np.array([1, 0, 3, 2, 5, 4, 7, 6])
    images = lam * batch["image"] + (1 - lam) * batch["image"][partner]
    logits, _ = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, images, train=True, mutable=["batch_stats"]
    )
    expected = lam * losses.weighted_mean_loss(logits, batch["label"], weights) + (1 - lam) * losses.weighted_mean_loss(
        logits, batch["label"][partner], weights
    )
    mixed = step(0.4)
    assert float(mixed["loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert abs(float(mixed["loss"]) - float(step(0.0)["loss"])) > 1e-3


@pytest.mark.parametrize("key, value", [("gce_q", 0.7), ("focal_gamma", 2.0)])
def test_the_step_trains_on_the_loss_its_config_names(key, value):
    # The generalized cross-entropy or the focal loss, each with the class weights.
    config = machinery_config(**{"model.drop_rate": 0.0, "model.drop_path_rate": 0.0, key: value})
    model, frozen, tx, state, batch = step_setting(config)
    weights = jnp.array([2.0, 0.5])
    logits, _ = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=True, mutable=["batch_stats"]
    )
    fn = steps.bound_train_step(config, model=model, tx=tx, frozen=frozen, class_weights=weights)
    metrics = jax.jit(fn)(state, batch)[1]
    expected = losses.weighted_mean_loss(logits, batch["label"], weights, **{key: value})
    assert float(metrics["loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert abs(float(expected) - float(losses.weighted_mean_loss(logits, batch["label"], weights))) > 1e-2
