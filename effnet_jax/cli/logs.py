"""A command's console: our own log lines at INFO, the libraries' at WARNING (or ERROR), their noise dropped."""

import logging as std_logging
import sys

from absl import flags, logging

from effnet_jax.cli.errors import quiet_disk_errors
from effnet_jax.progress import quiet_library_noise

FLAGS = flags.FLAGS


def show_our_logs():
    """Our own log lines (effnet_jax.*) on stderr at INFO, while absl and orbax stay at WARNING."""
    # Orbax logs every save at INFO through absl; keep absl at WARNING and give our
    # own logger (effnet_jax.*) a plain stderr handler at INFO.
    logging.set_verbosity(logging.WARNING)
    ours = std_logging.getLogger("effnet_jax")
    # Once per process: a command run twice in one process (tests) must not print each line twice.
    for handler in [h for h in ours.handlers if getattr(h, "effnet_jax_console", False)]:
        ours.removeHandler(handler)
    handler = std_logging.StreamHandler(sys.stderr)
    handler.effnet_jax_console = True
    handler.setFormatter(std_logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    ours.addHandler(handler)
    ours.setLevel(std_logging.INFO)
    ours.propagate = False
    quiet_library_noise()
    quiet_disk_errors()


def quiet_unless_verbose():
    """Drops to ERROR logging unless --verbosity was given: orbax logs every restore at INFO."""
    quiet_library_noise()
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)


def only_warnings_from_this_process():
    """On a process other than 0 of a multi-process job: warnings only, tagged with the process index."""
    # Process 0 tells the story; the others speak up only for warnings.
    import jax

    ours = std_logging.getLogger("effnet_jax")
    ours.setLevel(std_logging.WARNING)
    for handler in ours.handlers:
        handler.setFormatter(
            std_logging.Formatter(f"%(asctime)s [process {jax.process_index()}] %(name)s: %(message)s", "%H:%M:%S")
        )
