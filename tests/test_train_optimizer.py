"""Optimizer, schedule and loss pieces, on small hand-made trees (no network)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from effnet_jax import labels
from effnet_jax.labels import positive_probability
from effnet_jax.train import freeze, losses, optimizer
from effnet_jax.train.config import validate_config

PARAMS = {
    "conv_stem": {"kernel": jnp.ones((3, 3, 3, 4))},
    "bn1": {"scale": jnp.ones((4,)), "bias": jnp.ones((4,))},
    "blocks_0_0": {
        "conv_dw": {"kernel": jnp.ones((3, 3, 1, 4))},
        "bn1": {"scale": jnp.ones((4,)), "bias": jnp.ones((4,))},
    },
    "blocks_1_0": {
        "conv_pw": {"kernel": jnp.ones((1, 1, 4, 8))},
        "bn1": {"scale": jnp.ones((8,)), "bias": jnp.ones((8,))},
    },
    "conv_head": {"kernel": jnp.ones((1, 1, 8, 16))},
    "bn2": {"scale": jnp.ones((16,)), "bias": jnp.ones((16,))},
    "classifier": {"kernel": jnp.ones((16, 2)), "bias": jnp.ones((2,))},
}


def _nothing_frozen():
    return jax.tree.map(lambda _: False, PARAMS)


def test_cosine_schedule_warms_up_linearly_then_decays_to_min_lr_ratio():
    config = tiny_config(
        **{
            "optimizer.learning_rate": 1.0,
            "schedule.name": "cosine",
            "schedule.warmup_epochs": 1.0,
            "schedule.min_lr_ratio": 0.1,
        }
    )
    schedule = optimizer.create_schedule(config, total_steps=100, steps_per_epoch=10)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(0.5)
    assert float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(100)) == pytest.approx(0.1)


def test_step_schedule_decays_by_rate_every_decay_epochs_after_warmup():
    config = tiny_config(
        **{
            "optimizer.learning_rate": 1.0,
            "schedule.name": "step",
            "schedule.warmup_epochs": 1.0,
            "schedule.decay_epochs": 2.0,
            "schedule.decay_rate": 0.5,
        }
    )
    schedule = optimizer.create_schedule(config, total_steps=100, steps_per_epoch=10)
    assert [float(schedule(s)) for s in (10, 29, 30, 50)] == pytest.approx([1.0, 1.0, 0.5, 0.25])


def test_an_unknown_schedule_or_optimizer_names_its_key():
    with pytest.raises(ValueError, match=r"config\.schedule\.name='linear'"):
        optimizer.create_schedule(tiny_config(**{"schedule.name": "linear"}), 10, 5)
    with pytest.raises(ValueError, match=r"config\.optimizer\.name='lamb'"):
        optimizer.create_optimizer(tiny_config(**{"optimizer.name": "lamb"}), _nothing_frozen(), 10, 5)


@pytest.mark.parametrize("name", ["adamw", "sgd", "rmsprop"])
def test_weight_decay_never_touches_batchnorm_or_biases(name):
    config = tiny_config(
        **{
            "optimizer.name": name,
            "optimizer.learning_rate": 1.0,
            "optimizer.weight_decay": 0.1,
            "schedule.name": "constant",
            "schedule.warmup_epochs": 0.0,
        }
    )
    tx, _ = optimizer.create_optimizer(config, _nothing_frozen(), total_steps=10, steps_per_epoch=5)
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zeros, tx.init(PARAMS), PARAMS)
    for path, u in freeze.flat_paths(updates).items():
        if u.ndim == 1:
            assert not np.any(np.asarray(u)), path
        else:
            assert np.all(np.asarray(u) < 0), path


def test_freeze_until_freezes_everything_before_the_boundary():
    config = tiny_config(freeze_until="blocks_1")
    mask = freeze.flat_paths(freeze.frozen_mask(PARAMS, freeze.freeze_patterns(config, PARAMS)))
    assert sorted(p for p, f in mask.items() if f) == [
        "blocks_0_0/bn1/bias",
        "blocks_0_0/bn1/scale",
        "blocks_0_0/conv_dw/kernel",
        "bn1/bias",
        "bn1/scale",
        "conv_stem/kernel",
    ]
    assert freeze.frozen_norms(freeze.frozen_mask(PARAMS, freeze.freeze_patterns(config, PARAMS))) == (
        "^blocks_0_0/bn1$",
        "^bn1$",
    )


def test_gradient_accumulation_updates_once_per_k_batches_with_the_mean_gradient():
    config = tiny_config(
        **{
            "optimizer.name": "sgd",
            "optimizer.momentum": 0.0,
            "optimizer.weight_decay": 0.0,
            "optimizer.learning_rate": 1.0,
            "optimizer.grad_accum_steps": 2,
            "schedule.name": "constant",
            "schedule.warmup_epochs": 0.0,
        }
    )
    tx, _ = optimizer.create_optimizer(config, _nothing_frozen(), total_steps=10, steps_per_epoch=5)
    state = tx.init(PARAMS)
    g1 = jax.tree.map(jnp.ones_like, PARAMS)
    g2 = jax.tree.map(lambda p: 3 * jnp.ones_like(p), PARAMS)
    u1, state = tx.update(g1, state, PARAMS)
    u2, state = tx.update(g2, state, PARAMS)
    assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(u1))
    assert all(np.allclose(np.asarray(u), -2.0) for u in jax.tree.leaves(u2))


def test_layer_decay_scales_each_layer_by_its_depth_below_the_classifier():
    scales = freeze.flat_paths(optimizer.layer_lr_scales(PARAMS, 0.5))
    # Forward order: stem (conv_stem, bn1), blocks_0_0, blocks_1_0, head (conv_head, bn2), classifier.
    expected = {"conv_stem": 1 / 16, "bn1": 1 / 16, "blocks_0_0": 1 / 8, "blocks_1_0": 1 / 4}
    expected.update({"conv_head": 1 / 2, "bn2": 1 / 2, "classifier": 1.0})
    assert scales == {p: expected[p.split("/")[0]] for p in freeze.flat_paths(PARAMS)}
    for bad in (0.0, 1.5, -0.5):
        with pytest.raises(ValueError, match=r"config\.optimizer\.layer_decay"):
            optimizer.layer_lr_scales(PARAMS, bad)


@pytest.mark.parametrize("accum", [1, 2])
def test_layer_decay_gives_each_layer_its_learning_rate_and_weight_decay(accum):
    # AdamW's first step is lr * (sign(g) + wd * p): every term of it scales with the layer's factor.
    base = {
        "optimizer.learning_rate": 0.1,
        "optimizer.weight_decay": 0.5,
        "optimizer.grad_clip_norm": 1.0,
        "optimizer.grad_accum_steps": accum,
        "schedule.name": "constant",
        "schedule.warmup_epochs": 0.0,
    }
    frozen = freeze.frozen_mask(PARAMS, [("config.freeze[0]", "^blocks_0_0/")])
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), PARAMS)
    updates = {}
    for decay in (1.0, 0.5):
        tx, _ = optimizer.create_optimizer(
            tiny_config(**base, **{"optimizer.layer_decay": decay}), frozen, total_steps=10, steps_per_epoch=5
        )
        state = tx.init(PARAMS)
        for _ in range(accum):
            u, state = tx.update(grads, state, PARAMS)
        updates[decay] = freeze.flat_paths(u)
    scales = freeze.flat_paths(optimizer.layer_lr_scales(PARAMS, 0.5))
    for path, full in updates[1.0].items():
        np.testing.assert_allclose(updates[0.5][path], scales[path] * np.asarray(full), rtol=1e-6, err_msg=path)
        assert np.any(np.asarray(full)) != path.startswith("blocks_0_0/"), path  # frozen stays at zero


def test_class_weights_balanced_follow_sklearn_and_explicit_ones_parse():
    np.testing.assert_allclose(labels.class_weights("balanced", [100, 300]), [400 / 200, 400 / 600], rtol=1e-6)
    np.testing.assert_array_equal(labels.class_weights("1,2.5", [100, 300]), [1.0, 2.5])
    assert labels.class_weights("none", [100, 300]) is None
    with pytest.raises(ValueError, match=r"config\.class_weights='1,2,3'"):
        labels.class_weights("1,2,3", [100, 300])


def test_sigmoid_and_softmax_heads_give_the_same_loss_for_equivalent_logits():
    labels = jnp.array([0, 1, 1])
    z = jnp.array([-2.0, 0.5, 3.0])
    sigmoid = losses.per_example_loss(z[:, None], labels)
    softmax = losses.per_example_loss(jnp.stack([jnp.zeros(3), z], axis=1), labels)
    np.testing.assert_allclose(sigmoid, softmax, rtol=1e-5)
    np.testing.assert_allclose(
        positive_probability(z[:, None]), positive_probability(jnp.stack([jnp.zeros(3), z], axis=1)), rtol=1e-6
    )


def test_label_smoothing_moves_targets_towards_uniform():
    logits = jnp.array([[0.0, 0.0]])
    # At uniform logits the loss is ln 2 whatever the smoothing.
    assert float(losses.per_example_loss(logits, jnp.array([1]), 0.2)[0]) == pytest.approx(np.log(2), rel=1e-6)
    confident = jnp.array([[-10.0, 10.0]])
    assert float(losses.per_example_loss(confident, jnp.array([1]), 0.2)[0]) > float(
        losses.per_example_loss(confident, jnp.array([1]), 0.0)[0]
    )


def test_class_weights_scale_each_example_by_its_class_weight():
    logits = jnp.zeros((2, 2))
    labels = jnp.array([0, 1])
    loss = losses.weighted_mean_loss(logits, labels, np.array([1.0, 3.0], np.float32))
    assert float(loss) == pytest.approx(np.log(2) * (1.0 + 3.0) / 2, rel=1e-6)


def test_generalized_cross_entropy_spans_cross_entropy_to_mae():
    logits = jnp.array([[0.3, -1.2], [2.0, 0.5], [-0.7, 1.9]])
    labels_ = jnp.array([0, 1, 1])
    p = jax.nn.softmax(logits)[jnp.arange(3), labels_]
    # q -> 0 is cross-entropy; q = 1 is 1 - p_label (the mean absolute error of the probabilities).
    np.testing.assert_allclose(
        losses.per_example_loss(logits, labels_, gce_q=1e-5), losses.per_example_loss(logits, labels_), rtol=1e-4
    )
    np.testing.assert_allclose(losses.per_example_loss(logits, labels_, gce_q=1.0), 1.0 - p, rtol=1e-6)
    np.testing.assert_allclose(losses.per_example_loss(logits, labels_, gce_q=0.7), (1.0 - p**0.7) / 0.7, rtol=1e-5)


def test_generalized_cross_entropy_agrees_across_heads_and_smoothing():
    z = jnp.array([-2.0, 0.5, 3.0])
    labels_ = jnp.array([0, 1, 0])
    for smoothing in (0.0, 0.2):
        sigmoid = losses.per_example_loss(z[:, None], labels_, smoothing, gce_q=0.7)
        softmax = losses.per_example_loss(jnp.stack([jnp.zeros(3), z], axis=1), labels_, smoothing, gce_q=0.7)
        np.testing.assert_allclose(sigmoid, softmax, rtol=1e-5)
    # Smoothing 0.2 over two classes: targets 0.9 / 0.1 on the label's and the other's loss.
    logits = jnp.array([[0.0, 1.0]])
    p = jax.nn.softmax(logits)[0]
    expected = (0.1 * (1 - p[0] ** 0.5) + 0.9 * (1 - p[1] ** 0.5)) / 0.5
    assert float(losses.per_example_loss(logits, jnp.array([1]), 0.2, gce_q=0.5)[0]) == pytest.approx(float(expected))


def test_generalized_cross_entropy_pulls_less_on_a_confidently_wrong_label():
    # A training image the model calls NORMAL with p = 0.999 but labelled PNEUMONIA: under
    # cross-entropy its gradient dominates a merely uncertain image's; under GCE it does not.
    def grad_norm(logit, q):
        return abs(
            float(jax.grad(lambda z: losses.per_example_loss(jnp.array([[0.0, z]]), jnp.array([1]), gce_q=q)[0])(logit))
        )

    wrong, uncertain = -7.0, 0.0
    assert grad_norm(wrong, 0.0) / grad_norm(uncertain, 0.0) > 1.9
    assert grad_norm(wrong, 0.7) / grad_norm(uncertain, 0.7) < 0.1


def test_focal_loss_scales_cross_entropy_by_the_miss_to_the_gamma():
    logits = jnp.array([[0.3, -1.2], [2.0, 0.5], [-0.7, 1.9]])
    labels_ = jnp.array([0, 1, 1])
    p = jax.nn.softmax(logits)[jnp.arange(3), labels_]
    ce = losses.per_example_loss(logits, labels_)
    np.testing.assert_allclose(losses.per_example_loss(logits, labels_, focal_gamma=2.0), (1 - p) ** 2 * ce, rtol=1e-5)
    # A sigmoid head is the same two classes; smoothing 0.2 puts 0.1 of the target on the other class.
    z = jnp.array([-2.0, 0.5, 3.0])
    for smoothing in (0.0, 0.2):
        sigmoid = losses.per_example_loss(z[:, None], labels_, smoothing, focal_gamma=1.5)
        softmax = losses.per_example_loss(jnp.stack([jnp.zeros(3), z], axis=1), labels_, smoothing, focal_gamma=1.5)
        np.testing.assert_allclose(sigmoid, softmax, rtol=1e-5)
    q = jax.nn.softmax(jnp.array([0.0, 1.0]))
    expected = 0.1 * (1 - q[0]) ** 2 * -jnp.log(q[0]) + 0.9 * (1 - q[1]) ** 2 * -jnp.log(q[1])
    got = losses.per_example_loss(jnp.array([[0.0, 1.0]]), jnp.array([1]), 0.2, focal_gamma=2.0)[0]
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    # Class weights still scale each example.
    weighted = losses.weighted_mean_loss(logits, labels_, np.array([3.0, 1.0], np.float32), focal_gamma=2.0)
    assert float(weighted) == pytest.approx(float(jnp.mean(jnp.array([3.0, 1.0, 1.0]) * (1 - p) ** 2 * ce)), rel=1e-6)


def test_focal_loss_pulls_less_on_an_image_already_called_right():
    def grad_norm(logit, gamma):
        loss = lambda z: losses.per_example_loss(jnp.array([[0.0, z]]), jnp.array([1]), focal_gamma=gamma)[0]
        return abs(float(jax.grad(loss)(logit)))

    right, uncertain = 3.0, 0.0
    assert grad_norm(right, 0.0) / grad_norm(uncertain, 0.0) > 0.09
    assert grad_norm(right, 2.0) / grad_norm(uncertain, 2.0) < 0.01


@pytest.mark.parametrize(
    "values, message",
    [
        ({"focal_gamma": -1.0}, r"config\.focal_gamma=-1\.0: expected a number in \[0, 10\]"),
        ({"focal_gamma": float("nan")}, r"config\.focal_gamma=nan: expected a number in \[0, 10\]"),
        ({"focal_gamma": 2.0, "gce_q": 0.5}, r"config\.focal_gamma=2\.0 with config\.gce_q=0\.5: one loss at a time"),
    ],
)
def test_config_refuses_a_bad_focal_gamma(values, message):
    config = tiny_config()
    for key, value in values.items():
        setattr(config, key, value)
    with pytest.raises(ValueError, match=message):
        validate_config(config)


def test_config_refuses_a_gce_q_outside_zero_to_one():
    config = tiny_config()
    config.gce_q = 1.5
    with pytest.raises(ValueError, match=r"config\.gce_q=1\.5: expected a number in \[0, 1\]"):
        validate_config(config)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_anchor_decay_pulls_every_pretrained_weight_back_toward_its_start_and_not_the_classifier(name):
    config = tiny_config(
        **{
            "optimizer.name": name,
            "optimizer.momentum": 0.0,
            "optimizer.learning_rate": 0.5,
            "optimizer.weight_decay": 0.1,
            "optimizer.anchor_decay": 2.0,
            "schedule.name": "constant",
            "schedule.warmup_epochs": 0.0,
        }
    )
    validate_config(config)
    tx, _ = optimizer.create_optimizer(config, _nothing_frozen(), total_steps=10, steps_per_epoch=5)
    state = tx.init(PARAMS)
    moved = jax.tree.map(lambda p: p + 0.25, PARAMS)  # where the weights are now; they started at PARAMS
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, state = tx.update(zeros, state, moved)
    for path, u in freeze.flat_paths(updates).items():
        decay = 0.1 * 1.25 if u.ndim > 1 else 0.0  # plain weight decay: kernels only
        anchor = 0.0 if path.startswith("classifier/") else 2.0 * 0.25
        np.testing.assert_allclose(np.asarray(u), -0.5 * (decay + anchor), rtol=1e-6, err_msg=path)
    # The start stays the weights the optimizer was initialised with, step after step.
    updates, _ = tx.update(zeros, state, moved)
    np.testing.assert_allclose(np.asarray(updates["bn1"]["bias"]), -0.5 * 2.0 * 0.25, rtol=1e-6)


def test_anchor_decay_keeps_one_copy_of_the_starting_weights_off_the_classifier_and_none_when_off():
    def copies(decay):
        config = tiny_config(**{"optimizer.anchor_decay": decay})
        tx, _ = optimizer.create_optimizer(config, _nothing_frozen(), total_steps=10, steps_per_epoch=5)
        return sum(np.ndim(leaf) > 0 for leaf in jax.tree.leaves(tx.init(PARAMS)))

    n = len(jax.tree.leaves(PARAMS))
    assert copies(0.0) == 2 * n  # Adam's mu and nu
    assert copies(1e-2) == 3 * n - 2  # and the start of every leaf but the classifier's kernel and bias


def test_a_negative_anchor_decay_is_refused_naming_its_key():
    with pytest.raises(ValueError, match=r"config\.optimizer\.anchor_decay=-1\.0: expected a finite number >= 0"):
        validate_config(tiny_config(**{"optimizer.anchor_decay": -1.0}))


def _probe_config(**overrides):
    return tiny_config(
        **{
            "optimizer.learning_rate": 0.5,
            "optimizer.probe_epochs": 1.0,
            "optimizer.probe_learning_rate": 0.25,
            "optimizer.grad_clip_norm": 0.0,
            "schedule.name": "cosine",
            "schedule.warmup_epochs": 1.0,
            "schedule.min_lr_ratio": 0.0,
            **overrides,
        }
    )


def test_a_linear_probe_holds_every_pretrained_weight_then_fine_tunes_them_all_on_a_fresh_schedule():
    config = _probe_config()
    validate_config(config)
    tx, schedule = optimizer.create_optimizer(config, _nothing_frozen(), total_steps=20, steps_per_epoch=5)
    # The probe's 5 steps at its own rate, then the fine-tuning schedule over the other 15:
    # warmup from zero for an epoch, cosine to zero at the end.
    assert [float(schedule(s)) for s in range(5)] == [0.25] * 5
    assert float(schedule(5)) == 0.0
    assert float(schedule(10)) == pytest.approx(0.5)
    assert float(schedule(20)) == pytest.approx(0.0, abs=1e-7)
    state = tx.init(PARAMS)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    for step in range(7):
        updates, state = tx.update(grads, state, PARAMS)
        for path, u in freeze.flat_paths(updates).items():
            moving = path.startswith("classifier/") or step >= 5
            if moving and step != 5:  # step 5 is the schedule's first warmup step, at rate 0
                assert np.all(np.asarray(u) != 0), (step, path)
            else:
                np.testing.assert_array_equal(np.asarray(u), 0.0, err_msg=f"step {step} {path}")
    # Adam saw the held weights' gradients all along: at step 6 every leaf moves alike,
    # as it would after 7 steps of the same gradient (no fresh-moment overshoot).
    u = freeze.flat_paths(updates)
    np.testing.assert_allclose(np.asarray(u["bn1/bias"]), np.asarray(u["classifier/bias"][0]), rtol=1e-6)
    assert float(np.asarray(u["bn1/bias"])[0]) == pytest.approx(-float(schedule(6)), rel=1e-4)


def test_without_a_probe_the_optimizer_state_is_what_it_was():
    def leaves(**overrides):
        tx, _ = optimizer.create_optimizer(
            tiny_config(**overrides), _nothing_frozen(), total_steps=10, steps_per_epoch=5
        )
        return tx.init(PARAMS)

    def holds(state):
        return [
            s
            for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optimizer.HoldState))
            if isinstance(s, optimizer.HoldState)
        ]

    n = len(jax.tree.leaves(PARAMS))
    plain = leaves()
    probed = leaves(**{"optimizer.probe_epochs": 0.4})
    assert len(jax.tree.leaves(probed)) == len(jax.tree.leaves(plain)) + 1  # one step counter
    assert not holds(plain) and [int(h.count) for h in holds(probed)] == [0]
    assert sum(np.ndim(x) > 0 for x in jax.tree.leaves(plain)) == 2 * n  # Adam's mu and nu, nothing else


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"optimizer.probe_epochs": -0.5}, r"config\.optimizer\.probe_epochs=-0\.5: expected a finite number >= 0"),
        ({"optimizer.probe_learning_rate": float("nan")}, r"config\.optimizer\.probe_learning_rate=nan: expected"),
        (
            {"optimizer.probe_epochs": 2.0, "num_epochs": 2.0, "num_train_steps": -1},
            r"config\.optimizer\.probe_epochs=2\.0: the probe is part of the run, so it must be shorter than "
            r"config\.num_epochs=2\.0",
        ),
    ],
)
def test_a_bad_probe_is_refused_naming_its_key(overrides, match):
    config = tiny_config(**{"optimizer.probe_epochs": 0.5, **overrides})
    with pytest.raises(ValueError, match=match):
        validate_config(config)


def test_a_probe_that_rounds_to_no_step_or_every_step_is_refused_naming_its_key():
    for epochs in (0.05, 2.0):
        config = tiny_config(**{"optimizer.probe_epochs": epochs, "num_train_steps": 10})
        with pytest.raises(ValueError, match=r"config\.optimizer\.probe_epochs=.*optimizer steps of the run's 10"):
            optimizer.create_optimizer(config, _nothing_frozen(), total_steps=10, steps_per_epoch=5)
