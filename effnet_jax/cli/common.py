"""Helpers shared by the absl command-line tools."""

from absl import flags, logging

FLAGS = flags.FLAGS


def define_once(define, name, *args):
    """Defines a flag unless another command's module in this process already owns it (--workdir)."""
    if name not in FLAGS:
        define(name, *args)


def quiet_unless_verbose():
    """Drops to ERROR logging unless --verbosity was given: orbax logs every restore at INFO."""
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)
