"""Command-line entry points, one module per console script; each parses flags and calls the library.

    effnet-train    effnet-eval    effnet-predict    effnet-convert    effnet-data    effnet-results

Launchers and scripts that must not depend on installed entry points use the module form,
``python -m effnet_jax.cli.<verb>`` (train, evaluate, predict, convert, data, results).

The package's import tunes glibc's allocator to keep freed host memory for reuse
(``effnet_jax.host_memory``: a CPU train step otherwise page-faults its scratch buffer in
again every step); ``EFFNET_JAX_KEEP_HOST_MEMORY=0`` leaves the allocator alone.
"""

from effnet_jax.host_memory import keep_freed_host_memory

# Here, before a command's module imports numpy or JAX: a thread keeps the malloc arena of
# its first allocation, so XLA's threads must start after the change.
keep_freed_host_memory()
