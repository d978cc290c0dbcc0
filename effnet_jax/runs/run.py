"""A run directory read once into one value: ``runs.open(workdir, checkpoint) -> Run``.

Everything above this layer (evaluation, prediction, export, thresholds, the model card,
effnet-results) takes a ``Run`` instead of a workdir string, so no module re-derives a
file name from a path: the files are named in ``runs.layout`` and read here.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import reprlib
from typing import Any

import ml_collections
from etils import epath

from effnet_jax.compilation_cache import DEFAULT_COMPILATION_CACHE_DIR
from effnet_jax.metrics.calibration import Calibration
from effnet_jax.runs import checkpoints as checkpoints_lib
from effnet_jax.runs import model as model_lib
from effnet_jax.runs import values
from effnet_jax.runs.calibration import read_calibration, temperature_for_step
from effnet_jax.runs.layout import CONFIG, Layout, absolute
from effnet_jax.runs.metrics_log import read_metrics
from effnet_jax.runs.record import RunRecord
from effnet_jax.weights.readers import parse_json, read_json_file

log = logging.getLogger(__name__)

_MAX_JSON_BYTES = 16 << 20  # a config or report is a few kB; anything far larger is not one


@dataclasses.dataclass(frozen=True)
class Run:
    """One run directory as read by ``open``; the arrays of its checkpoint load on ``variables()``.

    ``step`` is the chosen checkpoint's (None when opened without one: ``checkpoint=None``
    reads config.json and run.json alone, for runs whose checkpoints are not needed).
    ``record`` is the run record the checkpoint carries (older runs: derived from their config).
    """

    workdir: str
    layout: Layout
    config: ml_collections.ConfigDict
    record: RunRecord | None
    step: int | None
    checkpoint: str | int | None  # as asked: 'best', 'latest' or a step number
    calibration: Calibration | None
    metrics: tuple[dict, ...]  # the records of metrics.jsonl, in order
    soup: dict | None  # soup.json: a soup's or seed ensemble's members
    adapted: dict | None = None  # adapted.json: effnet-adapt's record of the run it came from
    _state: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    # -- the checkpoint's arrays, read once on first use ---------------------------------------
    def variables(self, use_ema: bool = True) -> dict:
        """``{'params', 'batch_stats'}`` of the chosen checkpoint on the first local device (EMA when kept and asked)."""
        if self.step is None:
            raise ValueError(f"{self.workdir}: opened without a checkpoint (checkpoint=None); no variables to read")
        if "state" not in self._state:
            self._state["state"] = checkpoints_lib.read_state(self.workdir, self.step)
        return model_lib.inference_variables(self._state["state"], use_ema=use_ema)

    def model(self):
        """The module the run trained (no variables): its normalisation is the run record's."""
        return model_lib.model_for_run(self.config, self.record)

    # -- facts ----------------------------------------------------------------------------------
    @property
    def input_spec(self) -> tuple[int, tuple, tuple]:
        """``(image_size, mean, std)`` the run was trained with, from its run record."""
        return int(self.record.image_size), tuple(self.record.mean), tuple(self.record.std)

    @property
    def ensemble_size(self) -> int | None:
        """Members of a seed ensemble (logits averaged), else None."""
        return model_lib.ensemble_size(self.config)

    @property
    def training_data(self) -> str | None:
        """The data set the run trained on, as its loop recorded it ('synthetic', 'chest_xray', ...); None if unrecorded."""
        for record in reversed(self.metrics):
            if record.get("data"):
                return str(record["data"])
        return None

    def records(self, split: str | None = None) -> list[dict]:
        """The metrics records of one split (all when None), in order."""
        return [r for r in self.metrics if split is None or r.get("split") == split]

    def temperature(self) -> tuple[float, str]:
        """The temperature for the chosen checkpoint and a line saying why (1.0 unless fitted at this step)."""
        return temperature_for_step(self.calibration, self.step)

    def with_calibration(self, calibration: Calibration | None) -> Run:
        """This run as it reads once ``calibration`` is its calibration file."""
        return dataclasses.replace(self, calibration=calibration)

    def eval_report(self, name: str) -> dict:
        """The effnet-eval report ``eval/<name>/metrics.json``; FileNotFoundError or ValueError naming the file."""
        _refuse_links_out(self.workdir, [self.layout.eval_report(name)])
        report = _read_json(self.layout.eval_report(name))
        if not isinstance(report, dict):
            raise ValueError(f"{self.layout.eval_report(name)}: not a JSON object")
        return report

    def eval_file(self, name: str, file: str) -> str:
        """The path of ``eval/<name>/<file>`` (predictions.csv); ValueError naming it when it links out of the run."""
        path = os.path.join(self.layout.eval_dir(name), file)
        _refuse_links_out(self.workdir, [path])
        return path

    def eval_reports(self, strict: bool = False) -> list[tuple[str, dict]]:
        """``(path, report)`` of every effnet-eval report under eval/, in folder-name order.

        A report that is not valid JSON, or whose fields are not of the types effnet-eval
        writes (``values.check_report``: a downloaded run may hold anything), is skipped, or
        with ``strict`` a ValueError naming it and the key. A skipped report is logged, naming it.
        """
        found = []
        for path in sorted(glob.glob(self.layout.eval_report("*"))):
            try:
                _refuse_links_out(self.workdir, [path])
                report = _read_json(path)
                if isinstance(report, dict):
                    found.append((path, values.check_report(report, path)))
            except (OSError, ValueError) as e:
                if strict:
                    raise
                # Said, not silent: a threshold or sweep row would otherwise come from another report.
                why = str(e) if path in str(e) else f"{path}: {e}"
                log.warning("skipped an evaluation report that cannot be used: %s", why)
        return found


def _read_json(path: str) -> Any:
    if "://" not in path:  # local: size, file type and nesting checked (a downloaded run may hold anything)
        return read_json_file(path, _MAX_JSON_BYTES)
    return parse_json(epath.Path(path).read_text(), path)


def _read_optional_json(path: str) -> Any:
    return _read_json(path) if epath.Path(path).is_file() else None


def read_config(workdir: str) -> dict:
    """The run's config.json as a dict, without touching its checkpoints; FileNotFoundError when it has none."""
    blob = _read_optional_json(Layout(str(workdir)).config)
    if not isinstance(blob, dict):
        raise FileNotFoundError(f"{workdir}: no {CONFIG}; is this an effnet-train workdir?")
    return blob


def compilation_cache_dir(workdir: str) -> str:
    """The compilation cache a command reading ``workdir`` sets up: the default one, or none if the run turned it off.

    The cache holds executable code that JAX loads, and a run folder may come from anyone:
    a downloaded config.json naming a folder (one shipped with planted executables, or one
    of yours to write into) must not choose where it is. Only turning it off ('') is taken
    from the run. Read before the run is opened, to set the cache up before anything
    compiles: a config that cannot be read is left for ``open`` to report.
    """
    try:
        value = read_config(workdir).get("compilation_cache_dir", DEFAULT_COMPILATION_CACHE_DIR)
    except (OSError, ValueError):
        value = DEFAULT_COMPILATION_CACHE_DIR
    return "" if value == "" else DEFAULT_COMPILATION_CACHE_DIR


def open(workdir: str, checkpoint: str | int | None = "best") -> Run:
    """Reads the run in ``workdir``: config, run record, chosen step, calibration, metrics, soup.

    ``checkpoint``: 'best' (by the run's ``best_metric``; the latest if none was evaluated),
    'latest' or a step number; None reads config.json and run.json without touching the
    checkpoints. A malformed calibration file is a ValueError naming it, before any
    checkpoint is read. The arrays wait for ``Run.variables()``.
    """
    workdir = str(workdir)
    layout = Layout(workdir)
    _refuse_links_out(
        workdir, (layout.config, layout.run_record, layout.metrics, layout.calibration, layout.soup, layout.adapted)
    )
    calibration = read_calibration(layout)
    if checkpoint is None:
        try:
            config = ml_collections.ConfigDict(read_config(workdir))
        except (TypeError, ValueError) as e:  # a key ConfigDict refuses ('a.b'): a downloaded config may hold any
            raise ValueError(f"{layout.config}: {e}") from None
        saved_record = _read_optional_json(layout.run_record)
        record = RunRecord.from_json(saved_record, layout.run_record) if isinstance(saved_record, dict) else None
        step = None
    else:
        saved = checkpoints_lib.read_checkpoint(workdir, checkpoint, with_state=False)
        config, record, step = saved.config, saved.run, saved.step
    never_prepare(config)
    return Run(
        workdir=absolute(workdir),
        layout=layout,
        config=config,
        record=record,
        step=step,
        checkpoint=checkpoint,
        calibration=calibration,
        metrics=tuple(read_metrics(workdir)),
        soup=read_soup(layout.soup),
        adapted=_read_object(layout.adapted),
    )


def never_prepare(config: ml_collections.ConfigDict) -> None:
    """Sets ``data.prepare=False`` in the config of a saved run: its data folders are read as prepared.

    Its config.json names the folders of the machine it trained on, and a downloaded one may
    name any: evaluating, calibrating, adapting or souping it must not write a data set there.
    """
    data = config.get("data")
    if isinstance(data, ml_collections.ConfigDict):
        with data.unlocked():
            if "prepare" in data:  # a downloaded value of another type would refuse a bool
                del data["prepare"]
            data.prepare = False


def _refuse_links_out(workdir: str, paths) -> None:
    """A ValueError naming the first of ``paths`` that is a link out of the run ``workdir``.

    A downloaded run's config.json linked to a file elsewhere would have us read it (and
    effnet-adapt copy its calibration.json into the new run): only links inside the run are followed.
    """
    if "://" in workdir:
        return
    top = os.path.realpath(workdir)
    for path in paths:
        if os.path.lexists(path):  # the file or a folder on its way (eval/<name>/) may be the link
            target = os.path.realpath(path)
            if os.path.commonpath([top, target]) != top:
                raise ValueError(f"{path}: a link to {target}, outside the run {workdir}; refusing to read through it")


def _read_object(path: str) -> dict | None:
    """An optional JSON file that must hold an object (a downloaded run may hold anything there)."""
    value = _read_optional_json(path)
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{path}: a {type(value).__name__}, expected a JSON object")
    return value


def read_soup(path: str) -> dict | None:
    """soup.json, its members checked: everything that reads a soup's members walks them as we write them."""
    soup = _read_object(path)
    if soup is None:
        return None
    members = soup.get("members", [])
    if not isinstance(members, list) or len(members) > model_lib.MAX_MEMBERS:
        raise ValueError(
            f"{path}: members={reprlib.repr(members)}: expected a list of at most {model_lib.MAX_MEMBERS} records"
        )
    for i, entry in enumerate(members):
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("workdir"), str)
            and _is_count(entry.get("step"))
            and (entry.get("seed") is None or (isinstance(entry["seed"], int) and not isinstance(entry["seed"], bool)))
        )
        if not ok:
            raise ValueError(
                f"{path}: members[{i}]={reprlib.repr(entry)}: expected {{'workdir': a folder, 'step': an integer "
                ">= 0, 'seed': an integer >= 0 or null}"
            )
    return soup


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
