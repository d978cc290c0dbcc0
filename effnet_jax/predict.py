"""`python -m effnet_jax.predict`: the same as the effnet-predict command (effnet_jax/cli/predict.py)."""

from effnet_jax.cli.predict import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    run()
