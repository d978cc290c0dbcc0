"""The run directory (workdir): what a run holds, how it is written, and the one value that reads it.

    runs.open(workdir, checkpoint="best") -> Run   (config, run record, step, calibration,
                                                   metrics records, soup; variables() on demand)
    runs.compilation_cache_dir(workdir) -> str     (config.json alone: the cache to set up first)

``layout`` names every file a run holds; ``record``, ``checkpoints``, ``lock``, ``writer`` /
``metrics_log`` and ``calibration`` write and read them.
"""

from effnet_jax.runs.run import Run, compilation_cache_dir, open

__all__ = ["Run", "compilation_cache_dir", "open"]
