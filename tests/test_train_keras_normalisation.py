"""Fine-tuning from a Keras .h5 normalises inputs with the file's own mean/std, in training and in evaluation."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import json

import numpy as np
import pytest
from helpers import tiny_config

import effnet_jax
from effnet_jax import runs
from effnet_jax.data import pipeline
from effnet_jax.runs import checkpoints as checkpointing
from effnet_jax.train import feed, loop


@pytest.fixture(scope="module")
def keras_h5(tmp_path_factory):
    """A Keras applications B0 (random weights) whose Normalization layer holds non-ImageNet statistics."""
    import keras

    # A fresh session: layer names without the _<n> suffix of models built earlier in this process.
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3))
    # By type: Keras names it normalization_<n> when another model was built in this process.
    norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
    values = {"mean": 0.25, "variance": 0.09}
    for weight in norm.weights:
        if weight.name in values:
            weight.assign(np.full(weight.shape, values[weight.name], np.float32))
    path = tmp_path_factory.mktemp("keras") / "b0.h5"
    model.save(path)
    return str(path)


def test_fine_tuning_from_keras_uses_the_files_normalisation(keras_h5, tmp_path, monkeypatch):
    loaded, _ = effnet_jax.create_model("tf_efficientnet_b0", pretrained=keras_h5)
    expected_mean, expected_std = tuple(loaded.variant.mean), tuple(loaded.variant.std)
    default = effnet_jax.get_variant("tf_efficientnet_b0")
    assert not np.allclose(expected_std, default.std)  # the bug this guards against would go unseen otherwise

    seen = []
    real = pipeline.create_split
    real_compile = feed.Feed.compile

    def recording(data_config, split, **kwargs):
        seen.append((split, tuple(kwargs["mean"]), tuple(kwargs["std"])))
        return real(data_config, split, **kwargs)

    def recording_compile(self, step_fn, abstract_state):
        # The train step normalises its augmented batches on the device, with the feed's mean/std.
        seen.append(("train", self.mean, self.std))
        return real_compile(self, step_fn, abstract_state)

    monkeypatch.setattr(pipeline, "create_split", recording)
    monkeypatch.setattr(feed.Feed, "compile", recording_compile)
    config = tiny_config(
        **{
            "model.name": "tf_efficientnet_b0",
            "model.pretrained": keras_h5,
            "num_train_steps": 2,
            "eval_every_steps": 2,
            "checkpoint_every_steps": 2,
            "log_every_steps": 1,
            "num_devices": 1,
            "ema_decay": 0.0,
            # Only the head trains: the backward (and its compile) stays small; the
            # normalisation under test is the input pipeline's.
            "freeze_until": "conv_head",
        }
    )
    workdir = str(tmp_path / "run")
    loop.train_and_evaluate(config, workdir)

    # Training and the loop's validation both read with the file's normalisation.
    assert {s for s, _, _ in seen} == {"train", "validation"}
    for _, mean, std in seen:
        np.testing.assert_allclose(mean, expected_mean, rtol=1e-6)
        np.testing.assert_allclose(std, expected_std, rtol=1e-6)
    # Recorded in the run record (file and checkpoint), not in the config.
    with open(os.path.join(workdir, "run.json")) as f:
        record = json.load(f)
    np.testing.assert_allclose(record["std"], expected_std, rtol=1e-6)
    ckpt = checkpointing.Checkpointer(workdir, read_only=True)
    np.testing.assert_allclose(ckpt.restore_run(2).mean, expected_mean, rtol=1e-6)
    ckpt.close()
    with open(os.path.join(workdir, "config.json")) as f:
        assert "model_std" not in json.load(f)
    # effnet-eval / effnet-predict restore the same normalisation.
    run = runs.open(workdir, "latest")
    np.testing.assert_allclose(run.model().variant.std, expected_std, rtol=1e-6)
    np.testing.assert_allclose(run.record.mean, expected_mean, rtol=1e-6)
