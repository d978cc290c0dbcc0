"""The train step on 8 fake CPU devices: jit over a mesh equals pmap (with and without mixup or SAM), and frozen means frozen."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from helpers import machinery_config, tiny_config

import effnet_jax
from effnet_jax.data import augment
from effnet_jax.train import freeze, optimizer, steps
from effnet_jax.train import state as state_lib
from effnet_jax.train.config import default_augment_config
from effnet_jax.train.parallel import Parallel

STEPS = 3


def _config():
    # SGD, not Adam: Adam divides by sqrt(v), which blows float noise in near-zero
    # gradients up to the size of the learning rate and would hide real differences.
    # The test network: the step and its sharding are under test here, not the network.
    return machinery_config(
        **{
            "optimizer.name": "sgd",
            "optimizer.learning_rate": 0.02,
            "optimizer.weight_decay": 1e-4,
            "schedule.name": "constant",
            "schedule.warmup_epochs": 0.0,
            "model.drop_rate": 0.0,
            "freeze_until": "blocks_2",
            "ema_decay": 0.5,
        }
    )


def _batches():
    rs = np.random.RandomState(0)
    return [
        {"image": rs.randn(16, 32, 32, 3).astype(np.float32), "label": rs.randint(0, 2, 16).astype(np.int32)}
        for _ in range(STEPS)
    ]


def _gray_batches():
    # uint8 grey batches, augmented and normalised in the step: the draws must not depend
    # on how the batch is split (jit shards it over the mesh, pmap hands each device its rows).
    rs = np.random.RandomState(1)
    return [
        {"gray": rs.randint(0, 256, (16, 32, 32)).astype(np.uint8), "label": rs.randint(0, 2, 16).astype(np.int32)}
        for _ in range(STEPS)
    ]


AUGMENT = augment.spec_from_config(default_augment_config())
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def _run(mode: str, variables, mixup_alpha: float = 0.0, sam_rho: float = 0.0):
    config = _config()
    par = Parallel(mode)
    frozen = freeze.frozen_mask(variables["params"], freeze.freeze_patterns(config, variables["params"]))
    model = effnet_jax.build_model(
        config.model.name,
        num_classes=2,
        **state_lib.model_kwargs(config, freeze.frozen_norms(frozen), par.bn_axis_name),
    )
    tx, _ = optimizer.create_optimizer(config, frozen, total_steps=10, steps_per_epoch=5)
    state0 = state_lib.create_train_state(variables, tx, config)
    host0 = jax.device_get(state0)
    step = par.compile_train_step(
        functools.partial(
            steps.train_step,
            model=model,
            tx=tx,
            frozen=frozen,
            ema_decay=config.ema_decay,
            augment=AUGMENT,
            mixup_alpha=mixup_alpha,
            sam_rho=sam_rho,
            **IMAGENET,
        ),
        state0,
    )
    state = par.put_state(state0)
    for batch in _gray_batches():
        state, metrics = step(state, par.put_batch(batch))
    return host0, jax.device_get(par.get_state(state)), frozen, par.first_metrics(metrics)


@pytest.fixture(scope="module")
def runs():
    # A zero head (as train_and_evaluate starts) keeps the loss near ln 2; a random 2-way head
    # gives gradient norms in the thousands, where float noise grows chaotically step over step.
    _, variables = state_lib.model_from_config(_config())
    variables = jax.device_get(state_lib.zero_head(variables))
    return {"jit": _run("jit", variables), "pmap": _run("pmap", variables)}


@pytest.fixture(scope="module")
def mixup_runs():
    _, variables = state_lib.model_from_config(_config())
    variables = jax.device_get(state_lib.zero_head(variables))
    return {mode: _run(mode, variables, mixup_alpha=0.4) for mode in ("jit", "pmap")}


@pytest.fixture(scope="module")
def sam_runs():
    _, variables = state_lib.model_from_config(_config())
    variables = jax.device_get(state_lib.zero_head(variables))
    return {mode: _run(mode, variables, sam_rho=0.05) for mode in ("jit", "pmap")}


def _flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


def test_jit_mesh_and_pmap_give_the_same_params_after_3_steps(runs):
    _, jit_state, _, jit_metrics = runs["jit"]
    _, pmap_state, _, pmap_metrics = runs["pmap"]
    assert int(jit_state.step) == int(pmap_state.step) == STEPS
    for name in ("params", "batch_stats"):
        a, b = _flat(getattr(jit_state, name)), _flat(getattr(pmap_state, name))
        assert a.keys() == b.keys()
        for path in a:
            np.testing.assert_allclose(a[path], b[path], atol=1e-5, rtol=0, err_msg=f"{name}/{path}")
    assert jit_metrics["loss"] == pytest.approx(pmap_metrics["loss"], abs=1e-5)


def _assert_jit_equals_pmap_and_differs_from_plain(variant_runs, plain_runs):
    (_, jit_state, _, jit_metrics), (_, pmap_state, _, pmap_metrics) = variant_runs["jit"], variant_runs["pmap"]
    a, b, plain = (_flat(s.params) for s in (jit_state, pmap_state, plain_runs["jit"][1]))
    for path in a:
        np.testing.assert_allclose(a[path], b[path], atol=1e-5, rtol=0, err_msg=path)
    assert jit_metrics["loss"] == pytest.approx(pmap_metrics["loss"], abs=1e-5)
    assert max(float(np.abs(a[p] - plain[p]).max()) for p in a) > 1e-4


def test_with_mixup_jit_mesh_and_pmap_give_the_same_params_and_differ_from_no_mixup(runs, mixup_runs):
    # Partners are neighbours: on 8 devices each shard of 2 holds its pair, and lam is one
    # draw for all shards, so pmap blends exactly what the jitted global batch blends.
    _assert_jit_equals_pmap_and_differs_from_plain(mixup_runs, runs)


def test_with_sam_jit_mesh_and_pmap_give_the_same_params_and_differ_from_plain_steps(runs, sam_runs):
    # The ascent direction is the gradient averaged over every device (not each shard's own),
    # so the 8 pmapped shards move to the same perturbed weights the jitted global batch does.
    _assert_jit_equals_pmap_and_differs_from_plain(sam_runs, runs)


@pytest.mark.parametrize("mode", ["jit", "pmap"])
@pytest.mark.parametrize("kind", ["plain", "sam"])
def test_frozen_params_and_batch_stats_are_bitwise_unchanged_and_the_rest_changed(runs, sam_runs, mode, kind):
    before, after, frozen, _ = (runs if kind == "plain" else sam_runs)[mode]
    mask = _flat(frozen)
    assert any(mask.values()) and not all(mask.values())
    for path, is_frozen in mask.items():
        same = np.array_equal(_flat(before.params)[path], _flat(after.params)[path])
        assert same == is_frozen, f"params/{path}: frozen={is_frozen} but unchanged={same}"
        ema_same = np.array_equal(_flat(before.ema_params)[path], _flat(after.ema_params)[path])
        assert ema_same == is_frozen, f"ema_params/{path}"
    frozen_modules = {p.rsplit("/", 1)[0] for p, f in mask.items() if f}
    stats_before, stats_after = _flat(before.batch_stats), _flat(after.batch_stats)
    for path in stats_before:
        module = path.rsplit("/", 1)[0]
        same = np.array_equal(stats_before[path], stats_after[path])
        assert same == (module in frozen_modules), f"batch_stats/{path}"


def test_frozen_params_carry_no_optimizer_state(runs):
    _, after, frozen, _ = runs["jit"]
    trainable = {p for p, f in _flat(frozen).items() if not f}
    # SGD with momentum keeps exactly one trace per trainable parameter, nothing else param-shaped.
    param_shapes = {p: v.shape for p, v in _flat(after.params).items()}
    traced = []
    for keypath, leaf in jax.tree_util.tree_leaves_with_path(after.opt_state):
        # The parameter path is the run of dict keys after the optimizer's own structure.
        names = []
        for k in reversed(keypath):
            if not isinstance(k, jax.tree_util.DictKey):
                break
            names.insert(0, k.key)
        path = "/".join(names)
        if path in param_shapes:
            assert leaf.shape == param_shapes[path]
            traced.append(path)
        else:
            assert np.ndim(leaf) == 0, f"unexpected optimizer state {keypath}"
    assert sorted(traced) == sorted(trainable)


def test_a_freeze_pattern_matching_nothing_is_an_error_naming_its_key():
    params = {"conv_stem": {"kernel": np.zeros((3, 3, 3, 8))}, "classifier": {"kernel": np.zeros((8, 2))}}
    config = tiny_config(freeze=("^conv_stem/", "^blocks_9_"))
    with pytest.raises(ValueError, match=r"config\.freeze\[1\]='\^blocks_9_' matches no parameter"):
        freeze.frozen_mask(params, freeze.freeze_patterns(config, params))


def test_bfloat16_compute_keeps_params_batch_stats_and_optimizer_state_in_float32():
    config = _config()
    config.dtype = "bfloat16"
    config.freeze_until = ""
    par = Parallel("jit", jax.devices()[:1])
    _, variables = state_lib.model_from_config(config)
    frozen = jax.tree.map(lambda _: False, variables["params"])
    model = effnet_jax.build_model(config.model.name, num_classes=2, **state_lib.model_kwargs(config))
    tx, _ = optimizer.create_optimizer(config, frozen, total_steps=10, steps_per_epoch=5)
    state = state_lib.create_train_state(state_lib.zero_head(variables), tx, config)
    step = par.compile_train_step(
        functools.partial(steps.train_step, model=model, tx=tx, frozen=frozen, ema_decay=config.ema_decay), state
    )
    state, metrics = step(par.put_state(state), par.put_batch(_batches()[0]))
    assert np.isfinite(par.first_metrics(metrics)["loss"])
    floats = [
        x
        for x in jax.tree.leaves((state.params, state.batch_stats, state.opt_state, state.ema_params))
        if jnp.issubdtype(x.dtype, jnp.floating)
    ]
    assert floats and all(x.dtype == jnp.float32 for x in floats)


def _backward_modules(step_fn, state, batch):
    """Top-level modules that have equations in the traced step's backward pass (transpose of the jvp)."""
    import re

    found = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            stack = str(eqn.source_info.name_stack)
            if "transpose" in stack:
                m = re.search(r"(blocks_\d+_\d+|conv_stem|conv_head|classifier)", stack)
                if m:
                    found.add(m.group(1))
            for value in eqn.params.values():
                inner = getattr(value, "jaxpr", None)
                if inner is not None:
                    walk(getattr(inner, "jaxpr", inner))

    walk(jax.make_jaxpr(step_fn)(state, batch).jaxpr)
    return found


def test_no_backward_pass_is_traced_through_frozen_modules():
    config = _config()  # freeze_until='blocks_2'
    model, variables = state_lib.model_from_config(config)
    frozen = freeze.frozen_mask(variables["params"], freeze.freeze_patterns(config, variables["params"]))
    model = effnet_jax.build_model(
        config.model.name, num_classes=2, **state_lib.model_kwargs(config, freeze.frozen_norms(frozen))
    )
    tx, _ = optimizer.create_optimizer(config, frozen, total_steps=10, steps_per_epoch=5)
    state = state_lib.create_train_state(variables, tx, config)
    batch = _batches()[0]
    traced = {
        stop: _backward_modules(
            functools.partial(steps.train_step, model=model, tx=tx, frozen=frozen, stop_frozen_gradients=stop),
            state,
            batch,
        )
        for stop in (True, False)
    }
    frozen_modules = {m for m in traced[False] if m == "conv_stem" or m.startswith(("blocks_0_", "blocks_1_"))}
    assert frozen_modules, "the probe finds the frozen modules' backward pass when it is traced"
    assert not traced[True] & frozen_modules
    assert {m for m in traced[True] if m.startswith("blocks_2_")}, "the trainable blocks still get gradients"
