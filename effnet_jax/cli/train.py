"""effnet-train: train (or resume) a run described by a config file.

    effnet-train --config=configs/debug.py --workdir=/tmp/effnet_debug [--config.key=value ...]
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (configs/*.py); override keys with --config.key=value.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, tensorboard/. "
                               "An existing run there is resumed.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Import after flag parsing: JAX reads XLA_FLAGS and platform flags when first imported.
    from effnet_jax.train.loop import NonFiniteLossError, train_and_evaluate

    logging.info("config:\n%s", _CONFIG.value)
    try:
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except NonFiniteLossError as e:
        logging.error("%s", e)
        print(f"effnet-train: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"effnet-train: outputs in {_WORKDIR.value} (checkpoints/, metrics.jsonl, tensorboard/)")


class _QuietLibraries:
    """Drops orbax's per-save INFO chatter so the progress bar and our own lines stay readable."""

    def filter(self, record) -> bool:
        return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def run():
    """Console-script entry point (``effnet-train``)."""
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_QuietLibraries())
    app.run(main)


if __name__ == "__main__":
    run()
