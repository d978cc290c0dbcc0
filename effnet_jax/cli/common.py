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


def make_config_package_importable(argv) -> None:
    """Puts the folder above ``--config``'s folder on ``sys.path`` when that folder is a package.

    Config files are loaded by path (ml_collections), yet ``configs/*.py`` import their
    siblings as ``from configs import default``: that needs ``configs``' parent importable,
    whatever the working directory or launcher (console script or ``python -m``).
    """
    import os
    import sys

    value = None
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
    if not value:
        return
    path = os.path.abspath(os.path.expanduser(value.split(":", 1)[0] if not os.path.exists(value) else value))
    folder = os.path.dirname(path)
    if os.path.isfile(os.path.join(folder, "__init__.py")):
        root = os.path.dirname(folder)
        if root not in sys.path:
            sys.path.insert(0, root)
