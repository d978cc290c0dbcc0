"""What every command shares: flags defined once, its own --help, the entry point, the output-folder check."""

import contextlib
import os
import sys
import tempfile
import textwrap

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_once(define, name, *args, flag_values=None, **kwargs):
    """Defines a flag unless another command's module in this process already owns it (--workdir)."""
    fv = FLAGS if flag_values is None else flag_values
    if name not in fv:
        define(name, *args, flag_values=fv, **kwargs)


# absl's --help lists only the flags of the module named by sys.argv[0], which is a console
# script's path, not the module that defined them: each command prints its own flags instead.
HELP_ARGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")


def help_text(doc: str, define_flags) -> str:
    """The command's docstring, then each flag ``define_flags(flag_values)`` defines, with default and meaning."""
    fv = flags.FlagValues()
    define_flags(fv)
    lines = [doc.strip(), "", "Flags:"]
    for name in sorted(fv):
        flag = fv[name]
        if flag.boolean:
            usage = f"--[no]{name} (default: {'true' if flag.default else 'false'})"
        elif flag.default is None or flag.default == "":
            usage = f"--{name}"
        else:
            usage = f"--{name} (default: {flag.default})"
        lines.append(f"  {usage}")
        lines.extend(
            textwrap.wrap(" ".join(str(flag.help).split()), 96, initial_indent="      ", subsequent_indent="      ")
        )
    lines += ["", "--helpfull also lists the flags of absl and JAX."]
    return "\n".join(lines)


def exit_with_help_if_asked(argv, doc: str, define_flags) -> None:
    """``--help`` (or ``-h``, ``--helpshort``): prints ``help_text`` to stdout and exits 0."""
    args = list(argv[1:])
    if "--" in args:
        args = args[: args.index("--")]
    if any(a in HELP_ARGS for a in args):
        print(help_text(doc, define_flags))
        sys.exit(0)


def define_follow_links_flag(fv: flags.FlagValues = FLAGS) -> None:
    """--follow_links: read links to image files found in a folder wherever they point (effnet-predict, effnet-adapt)."""
    define_once(
        flags.DEFINE_bool,
        "follow_links",
        False,
        "Read links to image files found in a folder wherever they point (default: a link leading "
        "outside the folder is refused; files named on the command line are always read).",
        flag_values=fv,
    )


def define_run_flags(fv: flags.FlagValues = FLAGS) -> None:
    """--workdir and --checkpoint: which trained run and which of its checkpoints a command reads."""
    define_once(flags.DEFINE_string, "workdir", None, "Training run directory (holds checkpoints/).", flag_values=fv)
    define_once(
        flags.DEFINE_string,
        "checkpoint",
        "best",
        "'best' (by the run's best_metric), 'latest' or a step number.",
        flag_values=fv,
    )


@contextlib.contextmanager
def reader_may_leave():
    """A reader that stops early (``effnet-predict ... | head``) ends the command quietly, not with a traceback.

    Python ignores SIGPIPE, so the next write to the closed pipe raises BrokenPipeError;
    stdout is pointed at /dev/null so that the flush at exit does not raise it again.
    Exits 141 (128 + SIGPIPE), as a shell command killed by that signal does.
    """
    try:
        try:
            yield
        finally:  # --help exits through here too: flush while the error can still be caught
            sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)


def run_command(doc: str, define_flags, main) -> None:
    """A console script's entry point: --help from the command's own flags, else absl's app.run(main)."""
    with reader_may_leave():
        exit_with_help_if_asked(sys.argv, doc, define_flags)
        define_flags()
        app.run(main)


def define_config_flag(fv: flags.FlagValues = FLAGS) -> None:
    """--config: a config file (configs/*.py), each key overridable as --config.KEY=VALUE; locked against new keys."""
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Training config file (configs/*.py); override any key with --config.KEY=VALUE "
        "(effnet_jax/train/config.py lists every key).",
        flag_values=fv,
        lock_config=True,
    )


def parse_config_flags(command: str, argv: list[str]) -> list[str]:
    """absl's parse of ``argv`` for a command with --config; a bad flag or unknown --config.KEY exits 2 in one line."""
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        message = " ".join(str(e).replace("\\n", "\n").replace("\\", "").replace("'", "").split()).strip('"')
        if isinstance(e, (AttributeError, KeyError)):
            message = f"unknown config key {message} (the schema, effnet_jax/train/config.py, lists every key)"
        print(f"{command}: bad flag: {message}", file=sys.stderr)
        sys.exit(2)


def run_config_command(command: str, doc: str, define_flags, main) -> None:
    """The entry point of a command with --config and --workdir (effnet-train, effnet-sweep): flags parsed first.

    Parsed before absl's app.run so that a bad --config.KEY is one line naming it, not a traceback.
    """
    with reader_may_leave():
        exit_with_help_if_asked(sys.argv, doc, define_flags)
        define_flags()
        flags.mark_flags_as_required(["config", "workdir"])
        argv = parse_config_flags(command, sys.argv)
        app.run(main, argv=argv, flags_parser=lambda _: argv)


def check_output_dir(path: str, flag: str) -> str | None:
    """None when ``path`` is (or can be made) a writable folder, else an error naming ``flag``.

    Checked before restoring a checkpoint or reading weights, so a bad output path costs
    a second, not the half minute of work before the first write.
    """
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        return f"{flag}={path}: cannot write there ({e.strerror or e})"
    return None
