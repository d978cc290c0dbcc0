"""Command-line entry points, one module per console script; each parses flags and calls the library.

    effnet-train    effnet-eval    effnet-predict    effnet-convert    effnet-data    effnet-results

Launchers and scripts that must not depend on installed entry points use the module form,
``python -m effnet_jax.cli.<verb>`` (train, evaluate, predict, convert, data, results).
"""
