"""Training: optimizer and freezing, train state, steps, parallelism and the loop.

``train_and_evaluate(config, workdir)`` is the entry point; the CLI only parses flags.
"""

from effnet_jax.train.state import TrainState


def train_and_evaluate(config, workdir):
    """Trains and evaluates per ``config``, writing checkpoints and metrics in ``workdir``."""
    # Imported lazily so that `import effnet_jax.train` stays cheap for eval/predict.
    from effnet_jax.train.loop import train_and_evaluate as run

    return run(config, workdir)


__all__ = ["TrainState", "train_and_evaluate"]
