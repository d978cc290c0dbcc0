"""absl flags for grain worker processes (grain reads flags; unparsed ones raise)."""

from absl import flags


def ensure_absl_flags_parsed() -> None:
    """Mark absl flags parsed (with their defaults) unless the program already parsed them.

    grain's mp_prefetch reads absl flags in the parent and in its workers; outside
    absl.app.run (tests, notebooks, library callers) they are unparsed, and grain raises
    UnparsedFlagAccessError. Parsing only the program name keeps every default and
    leaves sys.argv alone.
    """
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
