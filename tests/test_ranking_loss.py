"""The pairwise ranking loss: exact on a hand-counted batch, global over pmap's shards, in the step, validated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import machinery_config, step_setting

from effnet_jax.train import losses, steps
from effnet_jax.train.config import validate_config


def _by_hand(scores, labels):
    # Every (positive, negative) pair, one at a time.
    terms = [
        np.logaddexp(0.0, float(n) - float(p))
        for p, yp in zip(scores, labels)
        if yp == 1
        for n, yn in zip(scores, labels)
        if yn == 0
    ]
    return sum(terms) / len(terms) if terms else 0.0


def test_the_loss_is_the_mean_softplus_over_every_positive_negative_pair():
    rs = np.random.RandomState(0)
    logits = rs.randn(7, 2).astype(np.float32) * 3
    labels = np.array([1, 0, 1, 1, 0, 1, 0], np.int32)
    scores = logits[:, 1] - logits[:, 0]
    assert float(losses.pairwise_ranking_loss(logits, labels)) == pytest.approx(_by_hand(scores, labels), rel=1e-5)
    # A sigmoid head's score is its one logit.
    one = scores[:, None]
    assert float(losses.pairwise_ranking_loss(one, labels)) == pytest.approx(_by_hand(scores, labels), rel=1e-5)


def test_the_loss_reads_only_the_order_and_is_zero_without_a_pair():
    labels = np.array([1, 0, 1, 0], np.int32)
    ordered = np.array([[0.0], [-30.0], [30.0], [-60.0]], np.float32)
    swapped = np.array([[-30.0], [0.0], [-60.0], [30.0]], np.float32)
    assert float(losses.pairwise_ranking_loss(ordered, labels)) < 1e-12
    assert float(losses.pairwise_ranking_loss(swapped, labels)) == pytest.approx(
        _by_hand(swapped[:, 0], labels), rel=1e-6
    )
    assert float(losses.pairwise_ranking_loss(ordered, np.ones(4, np.int32))) == 0.0
    assert float(losses.pairwise_ranking_loss(ordered, np.zeros(4, np.int32))) == 0.0


def test_under_pmap_the_pairs_span_every_device_and_the_gradient_is_the_global_one():
    # 8 fake devices, one example each: no device holds a pair of its own.
    n = jax.local_device_count()
    assert n == 8
    rs = np.random.RandomState(1)
    x = rs.randn(n, 1, 3).astype(np.float32)
    labels = np.array([1, 0, 1, 1, 0, 1, 0, 0], np.int32).reshape(n, 1)
    w = rs.randn(3, 2).astype(np.float32)

    def global_loss(w):
        return losses.pairwise_ranking_loss(x.reshape(n, 3) @ w, labels.reshape(n))

    def shard_grad(w, x, y):
        loss, grad = jax.value_and_grad(lambda w: losses.pairwise_ranking_loss(x @ w, y, "d"))(w)
        return loss, jax.lax.pmean(grad, "d")

    loss, grad = jax.pmap(shard_grad, axis_name="d", in_axes=(None, 0, 0))(w, x, labels)
    np.testing.assert_allclose(np.asarray(loss), float(global_loss(w)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad[0]), np.asarray(jax.grad(global_loss)(w)), rtol=1e-5, atol=1e-7)


def test_the_step_adds_the_weighted_ranking_loss_to_the_classification_loss():
    config = machinery_config(**{"model.drop_rate": 0.0, "model.drop_path_rate": 0.0, "rank_loss_weight": 0.5})
    model, frozen, tx, state, batch = step_setting(config)
    weights = jnp.array([2.0, 0.5])
    logits, _ = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=True, mutable=["batch_stats"]
    )
    ranking = losses.pairwise_ranking_loss(logits, batch["label"])
    expected = losses.weighted_mean_loss(logits, batch["label"], weights) + 0.5 * ranking
    fn = steps.bound_train_step(config, model=model, tx=tx, frozen=frozen, class_weights=weights)
    ranked_metrics = jax.jit(fn)(state, batch)[1]
    assert float(ranked_metrics["loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(ranking) > 1e-2
    # The gradient the optimizer sees (the first step's learning rate is 0 in warmup).
    plain_metrics = jax.jit(lambda s, b: fn(s, b, rank_loss_weight=0.0))(state, batch)[1]
    assert abs(float(ranked_metrics["grad_norm"]) - float(plain_metrics["grad_norm"])) > 1e-4


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rank_loss_weight": -1.0}, r"config.rank_loss_weight=-1.0: expected a finite number >= 0"),
        ({"rank_loss_weight": float("nan")}, r"config.rank_loss_weight=nan: expected a finite number >= 0"),
        ({"rank_loss_weight": 1.0, "mixup_alpha": 0.2}, r"config.rank_loss_weight=1.0: a mixup batch"),
        (
            {"rank_loss_weight": 1.0, "data.class_names": ("A", "B", "C")},
            r"config.rank_loss_weight=1.0: the ranking loss needs two classes, config.data.class_names has 3",
        ),
    ],
)
def test_bad_values_are_refused_naming_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate_config(machinery_config(**overrides))


def test_a_head_of_more_than_two_classes_is_refused_naming_the_key():
    with pytest.raises(
        ValueError, match=r"config.rank_loss_weight: the ranking loss needs two classes, the head has 3"
    ):
        losses.pairwise_ranking_loss(np.zeros((4, 3), np.float32), np.array([0, 1, 2, 1], np.int32))
