"""`python -m effnet_jax.results`: the same as the effnet-results command (effnet_jax/cli/results.py)."""

from effnet_jax.cli import results as _cli
from effnet_jax.cli.results import main, run

# absl prints the __main__ module's docstring as the usage text.
__doc__ = _cli.__doc__

__all__ = ["main", "run"]

if __name__ == "__main__":
    run()
