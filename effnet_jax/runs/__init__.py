"""The run directory (workdir): what a run holds, how it is written, and the one value that reads it.

    runs.open(workdir, checkpoint="best") -> Run   (config, run record, step, calibration,
                                                   metrics records, soup; variables() on demand)

``layout`` names every file a run holds; ``record``, ``checkpoints``, ``lock``, ``writer`` /
``metrics_log`` and ``calibration`` write and read them.
"""

from effnet_jax.runs.run import Run, open

__all__ = ["Run", "open"]
