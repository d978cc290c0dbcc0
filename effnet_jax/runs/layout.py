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

from etils import epath

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
