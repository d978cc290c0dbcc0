"""Helpers shared by the absl command-line tools."""

from absl import flags, logging

from effnet_jax.progress import quiet_library_noise

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
    import textwrap

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
    import sys

    args = list(argv[1:])
    if "--" in args:
        args = args[: args.index("--")]
    if any(a in HELP_ARGS for a in args):
        print(help_text(doc, define_flags))
        sys.exit(0)


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


def run_command(doc: str, define_flags, main) -> None:
    """A console script's entry point: --help from the command's own flags, else absl's app.run(main)."""
    import sys

    from absl import app

    exit_with_help_if_asked(sys.argv, doc, define_flags)
    define_flags()
    app.run(main)


def show_our_logs():
    """Our own log lines (effnet_jax.*) on stderr at INFO, while absl and orbax stay at WARNING."""
    import logging as std_logging
    import sys

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


# Exit statuses of effnet-train and data preparation (docs/untrusted-inputs-overview.md). An error
# a user can act on is one line naming the file, key or cause; anything else is a bug and
# keeps its traceback. EFFNET_TRACEBACK=1 shows the traceback of every error.
EXIT_USAGE = 2  # a bad flag or config key; a non-finite training loss
EXIT_INPUT = (
    3  # the data (layout, bad image, empty class, stale prepared copy), a weight file, soup members that differ
)
EXIT_WORKDIR = 4  # the workdir is held by another trainer, its checkpoint does not fit the config, or it holds another run than a soup
EXIT_DISK = 5  # writing failed: disk full, quota, read-only or permission denied
EXIT_PREEMPTED = 143  # stopped by SIGTERM after saving (128 + SIGTERM, as if killed by it)

_WRITE_ERRNOS = ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG")


def one_line(error: BaseException) -> tuple[int, str] | None:
    """``(exit status, message)`` for an error with a known cause; None for anything else."""
    import errno
    import re

    from effnet_jax.data.external import ExternalDataError
    from effnet_jax.data.imaging import BadImageError
    from effnet_jax.data.kermany import LayoutError
    from effnet_jax.data.prepare import StalePreparedDataError
    from effnet_jax.runs.checkpoints import CheckpointMismatchError
    from effnet_jax.runs.lock import WorkdirLockedError
    from effnet_jax.train.loop import TrainingDataError
    from effnet_jax.train.soup import IncompatibleMembersError, SoupWorkdirError
    from effnet_jax.weights.readers import WeightFileError

    # Background writers (orbax, grain) wrap the OSError: look down the chain for the cause.
    chain, seen = [], error
    while seen is not None and len(chain) < 20:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for e in chain:
        if isinstance(e, OSError) and e.errno in {getattr(errno, n, None) for n in _WRITE_ERRNOS} - {None}:
            where = f" {e.filename}" if e.filename else ""
            return EXIT_DISK, f"cannot write{where}: {e.strerror or e} (errno {errno.errorcode.get(e.errno)})"
    for e in chain:
        found = disk_error_text(str(e))
        if found:  # tensorstore (orbax's writer) reports a full disk as a ValueError with the OS's words
            return EXIT_DISK, f"cannot write{found[1]}: {found[0]}"
    if isinstance(error, (WorkdirLockedError, CheckpointMismatchError, SoupWorkdirError)):
        return EXIT_WORKDIR, str(error)
    if isinstance(
        error,
        (
            LayoutError,
            BadImageError,
            TrainingDataError,
            StalePreparedDataError,
            WeightFileError,
            ExternalDataError,
            IncompatibleMembersError,
        ),
    ):
        return EXIT_INPUT, " ".join(str(error).split("\n  ")[:2]) + _more(error)
    if isinstance(error, FileNotFoundError) and error.errno is None:
        return EXIT_INPUT, str(error)  # ours: a message naming the missing file or config key
    if isinstance(error, ValueError) and re.match(r"(config|data|model)\.\w+", str(error)):
        return EXIT_USAGE, str(error).splitlines()[0]  # ours: 'config.key=value: expected ...'
    return None


# How a write error reads when a library (tensorstore, under orbax) turned it into text.
_DISK_TEXT = (
    r"No space left on device|Disk quota exceeded|Read-only file system|File too large"
    r"|os_error_code='(?:28|122|30|27)'"
)


def disk_error_text(text: str) -> tuple[str, str] | None:
    """``(the OS's words, ' PATH' or '')`` when ``text`` reports a failed write (disk full, quota, read-only)."""
    import re

    match = re.search(_DISK_TEXT, text)
    if match is None:
        return None
    words = match.group(0)
    if words.startswith("os_error_code"):
        words = {"28": "No space left on device", "122": "Disk quota exceeded", "30": "Read-only file system"}.get(
            words.split("'")[1], "File too large"
        )
    path = re.search(r'(?:local file|Failed writing:) "([^"]+)"', text)
    return words, f" {path.group(1)}" if path else ""


class DiskErrorsInOneLine:
    """A logging filter: the first record carrying a failed write becomes one line; the rest are dropped.

    Orbax's background save threads log every failed write with its traceback, and asyncio
    repeats each at exit; the command's own one-line error says it once.
    """

    def __init__(self):
        self.seen = False

    def filter(self, record) -> bool:
        import logging as std_logging

        if getattr(record, "disk_error_said", False):
            return True  # the line this filter wrote, met again by a handler further up

        try:
            text = record.getMessage()
        except (TypeError, ValueError):  # a record whose arguments do not fit its format
            text = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]!r}"
        found = disk_error_text(text)
        if found is None:
            return True
        if self.seen:
            return False
        self.seen = True
        record.msg, record.args, record.exc_info, record.exc_text = (
            f"writing failed{found[1]}: {found[0]} (a background save; the run stops at its next wait)",
            (),
            None,
            None,
        )
        record.levelno, record.levelname = std_logging.ERROR, "ERROR"
        record.disk_error_said = True
        return True


def quiet_disk_errors() -> None:
    """Installs ``DiskErrorsInOneLine`` on absl's and asyncio's loggers and on the root logger's handlers."""
    import logging as std_logging

    shared = DiskErrorsInOneLine()
    for target in (std_logging.getLogger("absl"), std_logging.getLogger("asyncio"), *std_logging.getLogger().handlers):
        target.addFilter(shared)


def _more(error) -> str:
    # Bad-image errors list every file, one per line: show the first and count the rest.
    lines = str(error).split("\n  ")
    return f" (+{len(lines) - 2} more; all listed with EFFNET_TRACEBACK=1)" if len(lines) > 2 else ""


def exit_in_one_line(prog: str, error: BaseException):
    """Prints ``prog: message`` and exits with its status when ``error`` has a known cause; else re-raises."""
    import os
    import sys

    known = one_line(error)
    if known is None or os.environ.get("EFFNET_TRACEBACK"):
        raise error
    status, message = known
    print(f"{prog}: {message}", file=sys.stderr)
    if status == EXIT_DISK:
        import logging as std_logging

        # Background writers' futures report the same failure again at exit: it has been said.
        std_logging.disable(std_logging.CRITICAL)
    sys.exit(status)


def check_output_dir(path: str, flag: str) -> str | None:
    """None when ``path`` is (or can be made) a writable folder, else an error naming ``flag``.

    Checked before restoring a checkpoint or reading weights, so a bad output path costs
    a second, not the half minute of work before the first write.
    """
    import os
    import tempfile

    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        return f"{flag}={path}: cannot write there ({e.strerror or e})"
    return None


DEFAULT_COMPILATION_CACHE_DIR = "~/.cache/effnet_jax/jax_cache"


def setup_compilation_cache(directory: str | None = DEFAULT_COMPILATION_CACHE_DIR) -> str:
    """Turns on JAX's persistent compilation cache in ``directory``; returns the path ('' = off).

    A second run (or a resume, an eval, a predict) with the same model, shapes, devices and
    jax version then loads the compiled train/eval steps from disk instead of compiling them
    again; CPU executables are cached too. Must run before the process compiles anything:
    JAX decides once, at its first compilation, whether the cache is used. Only
    computations that took at least a second to compile are written, so the cache holds the
    steps, not every small helper. The cache is trusted code: keep it in a directory only
    you can write to. ``None`` means the default, ``''`` turns it off.
    """
    import os

    import jax

    if directory is None:
        directory = DEFAULT_COMPILATION_CACHE_DIR
    if not directory:
        return ""
    path = os.path.abspath(os.path.expanduser(directory))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        logging.warning("compilation cache %s unusable (%s); compiling from scratch", path, e)
        return ""
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return path


def run_compilation_cache_dir(workdir: str) -> str:
    """``compilation_cache_dir`` of a training run (its config file), or the default for older runs."""
    import json

    from effnet_jax.runs.layout import Layout

    try:
        with open(Layout(workdir).config) as f:
            value = json.load(f).get("compilation_cache_dir", DEFAULT_COMPILATION_CACHE_DIR)
    except (OSError, ValueError):
        value = DEFAULT_COMPILATION_CACHE_DIR
    return value if isinstance(value, str) else DEFAULT_COMPILATION_CACHE_DIR


def write_card_or_warn(workdir: str, prog: str) -> str | None:
    """Rewrites the run's model card from what it holds now; a card that cannot be written is a warning, never a failed command."""
    import sys

    from effnet_jax import runs
    from effnet_jax.reporting.model_card import write_model_card

    try:
        return write_model_card(runs.open(workdir, checkpoint=None))
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"{prog}: warning: could not write the model card in {workdir}: {type(e).__name__}: {e}", file=sys.stderr)
        return None
