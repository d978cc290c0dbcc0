"""python -m effnet_jax.data: the same as effnet-data (report, clean)."""

from effnet_jax.cli import data

data.run()
