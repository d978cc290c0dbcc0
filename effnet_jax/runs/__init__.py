"""The run directory (workdir): what a run holds, how it is written, and the one value that reads it."""
