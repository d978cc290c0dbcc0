"""``python -m effnet_jax.train``: the same as ``effnet-train``."""

from effnet_jax.cli.train import run

if __name__ == "__main__":
    run()
