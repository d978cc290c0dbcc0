"""`python -m effnet_jax.convert`: the same as the effnet-convert command (effnet_jax/cli/convert.py)."""

from effnet_jax.cli import convert as _cli
from effnet_jax.cli.convert import main, run

# absl prints the __main__ module's docstring as the usage text.
__doc__ = _cli.__doc__

__all__ = ["main", "run"]

if __name__ == "__main__":
    run()
