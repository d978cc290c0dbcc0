"""Every file and folder a run directory holds, named once.

    WORKDIR/
      config.json           the config as run (data.name 'auto' resolved)
      run.json              the run record: image size, input mean/std, train class counts
      metrics.jsonl         one JSON record per line: {"step", "split", ...}
      tensorboard/          the same scalars as TensorBoard events
      checkpoints/<step>/   orbax checkpoints (runs.checkpoints)
      calibration.json      the temperature fitted at one checkpoint (effnet-eval --calibrate)
      soup.json             a soup's or seed ensemble's record of its members
      members/seed_<S>/     a soup's member runs, each a run directory of its own
      adapted.json          effnet-adapt's record: the source run and the unlabeled images it adapted to
      eval/<split>_<step>/  effnet-eval's reports (metrics.json, plots, predictions.csv)
      MODEL_CARD.md         the model card, rewritten from the files above
      .lock                 held by the one trainer writing the run

Nothing else in the package spells these names: it asks a ``Layout`` for the path.
Works for local and remote (``gs://``) workdirs alike.
"""

from __future__ import annotations

import dataclasses
import os
import stat

from etils import epath

from effnet_jax.output_files import output_file_problem

CONFIG = "config.json"
RUN_RECORD = "run.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
CALIBRATION = "calibration.json"
SOUP = "soup.json"
MEMBERS = "members"
ADAPTED = "adapted.json"
EVAL = "eval"
EVAL_REPORT = "metrics.json"
MODEL_CARD = "MODEL_CARD.md"
LOCK = ".lock"

# What a run writes at its top level: the names a downloaded or shared folder may have planted
# links (or FIFOs) at, checked before a trainer, soup or adaptation writes anything there.
WRITTEN_FILES = (CONFIG, RUN_RECORD, METRICS, CALIBRATION, SOUP, ADAPTED, MODEL_CARD, MODEL_CARD + ".tmp", LOCK)
WRITTEN_FOLDERS = (TENSORBOARD, CHECKPOINTS, MEMBERS, EVAL)


def absolute(workdir: str) -> str:
    """An absolute local path, or a remote one (``gs://...``) unchanged."""
    return str(workdir) if "://" in str(workdir) else os.path.abspath(workdir)


def _join(*parts: str) -> str:
    return str(epath.Path(parts[0]).joinpath(*parts[1:])) if "://" in parts[0] else os.path.join(*parts)


@dataclasses.dataclass(frozen=True)
class Layout:
    """The paths of one run directory (``root`` as given: relative paths stay relative)."""

    root: str

    @property
    def config(self) -> str:
        return _join(self.root, CONFIG)

    @property
    def run_record(self) -> str:
        return _join(self.root, RUN_RECORD)

    @property
    def metrics(self) -> str:
        return _join(self.root, METRICS)

    @property
    def tensorboard(self) -> str:
        return _join(self.root, TENSORBOARD)

    @property
    def checkpoints(self) -> str:
        return _join(absolute(self.root), CHECKPOINTS)

    @property
    def calibration(self) -> str:
        return _join(self.root, CALIBRATION)

    @property
    def soup(self) -> str:
        return _join(self.root, SOUP)

    @property
    def members(self) -> str:
        return _join(absolute(self.root), MEMBERS)

    @property
    def adapted(self) -> str:
        return _join(self.root, ADAPTED)

    def member(self, seed: int) -> str:
        """``WORKDIR/members/seed_<S>``: a soup member's own run directory (absolute)."""
        return _join(self.members, f"seed_{seed}")

    @property
    def eval(self) -> str:
        return _join(absolute(self.root), EVAL)

    def eval_dir(self, name: str) -> str:
        """``WORKDIR/eval/<name>`` (absolute): one effnet-eval report's folder."""
        return _join(self.eval, name)

    def eval_report(self, name: str) -> str:
        return _join(self.eval_dir(name), EVAL_REPORT)

    @property
    def model_card(self) -> str:
        return _join(self.root, MODEL_CARD)

    @property
    def lock(self) -> str:
        return _join(self.root, LOCK)


def planted_output_problem(workdir: str, flag: str = "--workdir") -> str | None:
    """Why a run should not be written into local ``workdir`` (``flag=path: ...``); None when it may.

    A link, FIFO or shared file at one of the files a run writes (``open_output`` would refuse
    it, but only once training reached that write), or a link (dangling or not) or a file at
    one of its folders: orbax, TensorBoard and the soup's members would write through it.
    """
    if "://" in str(workdir):
        return None  # cloud storage has no links to plant
    for name in WRITTEN_FILES:
        problem = output_file_problem(os.path.join(workdir, name), flag)
        if problem:
            return problem
    for name in WRITTEN_FOLDERS:
        path = os.path.join(workdir, name)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        except OSError as e:
            return f"{flag}={path}: cannot check it ({e.strerror or e})"
        if stat.S_ISLNK(mode):
            return (
                f"{flag}={path}: is a symbolic link to {os.path.realpath(path)}; refusing to write the run through it"
            )
        if not stat.S_ISDIR(mode):
            return f"{flag}={path}: not a folder (a file, FIFO or device); a run keeps its {name} there"
    return None
