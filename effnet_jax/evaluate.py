"""`python -m effnet_jax.evaluate`: the same as the effnet-eval command (effnet_jax/cli/evaluate.py)."""

from effnet_jax.cli.evaluate import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    run()
