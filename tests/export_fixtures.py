"""A small exported model for the tests of effnet-export, effnet_jax.serving and effnet-serve.

``converted_test_weights`` writes converted weights of the test network; ``make_workdir`` writes a run with one checkpoint of random Lite0 weights at 32 px (nothing is
trained); ``export_tiny`` exports it for the CPU, Grad-CAM function included.
"""

import json

import jax
import numpy as np
import optax
from helpers import tiny_config

STEP = 3


def converted_test_weights(folder):
    """``folder`` written as effnet-convert writes converted weights: the unlisted test network, 2 classes."""
    from effnet_jax.models.efficientnet import build_model, init_variables
    from effnet_jax.models.variants import TEST_VARIANT
    from effnet_jax.weights.loading import LoadReport, save_converted

    model = build_model(TEST_VARIANT.name, num_classes=2)
    variables = jax.tree_util.tree_map(np.asarray, init_variables(model, 0))
    report = LoadReport([], [], "test", "test")
    save_converted(folder, model.variant, 2, variables, report, model.variant.mean, model.variant.std)
    return folder


def random_variables(model, seed: int = 0) -> dict:
    """Variables of ``model`` drawn with numpy from their shapes (``eval_shape``: nothing is compiled)."""
    from effnet_jax.models import init_variables

    shapes = jax.eval_shape(lambda: init_variables(model))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "batch_stats" in name:
            return np.full(leaf.shape, 1.0 if "var" in name else 0.0, np.float32)
        if "scale" in name or "bias" in name:
            return np.full(leaf.shape, 1.0 if "scale" in name else 0.0, np.float32)
        fan_in = int(np.prod(leaf.shape[:-1])) or 1
        # He-style scale keeps activations O(1) through the blocks; a small head keeps P away from 0 and 1.
        gain = 0.05 if "classifier" in name else 1.0
        return (gain * rng.normal(0, np.sqrt(2.0 / fan_in), leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def make_workdir(path, config=None) -> str:
    """A run with one checkpoint (random Lite0 weights at 32 px) and a validation record; no training.

    ``config``: the run's config (default ``tiny_config()``).
    """
    from effnet_jax.models import build_model
    from effnet_jax.runs import record as run_record
    from effnet_jax.runs.checkpoints import Checkpointer
    from effnet_jax.train import state as state_lib

    config = tiny_config() if config is None else config
    model = build_model(config.model.name, num_classes=2, **state_lib.model_kwargs(config))
    state = state_lib.create_train_state(random_variables(model), optax.sgd(0.1), config)
    run = run_record.RunRecord(config.image_size, tuple(model.variant.mean), tuple(model.variant.std), (20, 44))
    ckpt = Checkpointer(str(path), best_metric=None, async_save=False)
    ckpt.save(STEP, state, {}, config, run=run)
    ckpt.wait()
    ckpt.close()
    record = {"step": STEP, "split": "validation", "data": "synthetic", "auc": 0.75, "accuracy": 0.5}
    (path / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    return str(path)


def export_tiny(root) -> str:
    """``root/run`` made by ``make_workdir``, exported to ``root/exported`` for the CPU; returns that folder."""
    from effnet_jax import runs
    from effnet_jax.inference.export import export_run

    (root / "run").mkdir()
    export_run(runs.open(make_workdir(root / "run")), str(root / "exported"), platforms=("cpu",))
    return str(root / "exported")
