"""Training: config schema helpers, optimizer and freezing, train state, steps, parallelism, the loop,
evaluation passes and checkpointing.

``train_and_evaluate(config, workdir)`` is the entry point; the CLI only parses flags.
"""

from effnet_jax.train.loop import train_and_evaluate
from effnet_jax.train.state import TrainState

__all__ = ["TrainState", "train_and_evaluate"]
