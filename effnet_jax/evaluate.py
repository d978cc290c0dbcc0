"""`python -m effnet_jax.evaluate`: the same as the effnet-eval command (effnet_jax/cli/evaluate.py)."""

from effnet_jax.cli import evaluate as _cli
from effnet_jax.cli.evaluate import main, run

# absl prints the __main__ module's docstring as the usage text.
__doc__ = _cli.__doc__

__all__ = ["main", "run"]

if __name__ == "__main__":
    run()
