"""`python -m effnet_jax.predict`: the same as the effnet-predict command (effnet_jax/cli/predict.py)."""

from effnet_jax.cli import predict as _cli
from effnet_jax.cli.predict import main, run

# absl prints the __main__ module's docstring as the usage text.
__doc__ = _cli.__doc__

__all__ = ["main", "run"]

if __name__ == "__main__":
    run()
