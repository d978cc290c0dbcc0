"""effnet-train --config=configs/default.py --workdir=/tmp/effnet_default

Every configuration key of effnet-train, with its default and meaning: the schema lives
in the library (effnet_jax/train/config.py) so that an installed package has it too;
the other configs start from it. A reference, not a recipe.
Results: not measured (no record).

Override any key on the command line: --config.optimizer.learning_rate=3e-4.
"""

from effnet_jax.train.config import get_config

__all__ = ["get_config"]
