"""A recipe search with the real trainer: every point of a grid of config overrides, trained and scored.

    effnet-sweep --config=CFG --workdir=DIR --sweep='optimizer.learning_rate=[1e-3,5e-4]' --sweep='seed=[0,1]'

    --sweep flags -> axes (``parse_axis``: a config key and a list of Python literals)
      -> grid (``plan``): the cartesian product in flag order, every point's config checked
         (keys against the schema, values by type and by ``validate_config``) before any trains
      -> each point in DIR/points/<slug>/: ``run_experiment``, effnet-train's own job; a finished
         point is skipped, a half-trained one resumes from its checkpoint as effnet-train resumes
      -> its best checkpoint evaluated on validation and every external split (effnet-eval's
         reports, in the point's eval/; reused when a report for that step is there)
      -> DIR/sweep.csv (one row per point: overrides, best step, metrics at the operating
         threshold) and DIR/sweep.md (the same rows as a markdown table)

DIR/sweep_config.json keeps the config the sweep was started with: a rerun under another one
(another --config, another --config.KEY) is refused rather than reusing points trained under it.

DIR/.lock keeps a second sweep off the same DIR (``runs.lock``); each point's run holds its own.
"""

from __future__ import annotations

import ast
import copy
import csv
import dataclasses
import difflib
import itertools
import json
import logging
import math
import os

import jax
import ml_collections
from etils import epath

from effnet_jax import runs
from effnet_jax.data import external
from effnet_jax.experiment import run_experiment
from effnet_jax.inference import tta as tta_lib
from effnet_jax.inference.evaluation import VALIDATION, evaluate_checkpoint, output_dir
from effnet_jax.metrics import intervals as intervals_lib
from effnet_jax.output_files import csv_cell, open_output, short_hash, slug
from effnet_jax.reporting.results_tables import markdown_table
from effnet_jax.runs import layout as layout_lib
from effnet_jax.runs import lock as workdir_lock
from effnet_jax.runs.layout import EVAL_REPORT, Layout
from effnet_jax.train.config import flat_values, validate_config
from effnet_jax.train.loop import NonFiniteLossError, planned_steps
from effnet_jax.train.soup import run_finished, soup_seeds
from effnet_jax.weights.readers import read_json_file

log = logging.getLogger("effnet_jax.sweep")

POINTS = "points"
CSV = "sweep.csv"
MARKDOWN = "sweep.md"
BASE_CONFIG = "sweep_config.json"
# Keys that change how a point runs, never what it learns: a rerun may change them.
RERUNNABLE_KEYS = frozenset(
    {"progress_bar", "stop_after_steps", "compilation_cache_dir", "data.num_workers", "data.prefetch_buffer"}
)
# The operating-threshold metrics of each evaluated split, as CSV columns <split>_<name>.
SCORES = (("auc", "auc"), ("accuracy", "accuracy"), ("sensitivity", "recall"), ("specificity", "specificity"))


class SweepFolderError(ValueError):
    """The sweep's folder holds what a sweep never writes there (a downloaded or edited half-done sweep): one line."""


class SweepConfigChangedError(SweepFolderError):
    """The sweep's folder was swept under another config: its finished points would be reused as this config's."""


# Each point is a whole training run: a grid past this is a typo (a long list pasted twice), not a plan,
# and building it would copy the config per point before the first trains.
MAX_POINTS = 1000
# A config's JSON is a few kB; a planted sweep_config.json past this is refused before parsing.
MAX_BASE_CONFIG_BYTES = 1 << 20


class SweepError(ValueError):
    """A --sweep flag that cannot be a grid axis: names the key and what was expected."""


@dataclasses.dataclass(frozen=True)
class Axis:
    """One --sweep flag: a config key and the values it takes, in order."""

    key: str
    values: tuple


@dataclasses.dataclass(frozen=True)
class Point:
    """One grid point: its overrides (flag order), its folder's name and its config."""

    overrides: dict
    slug: str
    config: ml_collections.ConfigDict
    workdir: str


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """What ``run_sweep`` wrote: one row per point (grid order) and the points it trained this time."""

    workdir: str
    rows: list
    trained: tuple  # slugs of the points trained (or resumed) by this call; the others were finished
    csv: str
    markdown: str


# --------------------------------------------------------------------------------------------------
# The grid: --sweep flags parsed and every point checked before anything trains.
# --------------------------------------------------------------------------------------------------
def _short(text: str, most: int = 200) -> str:
    """``text`` on one line, its middle elided past ``most`` characters: a pasted MB flag stays a readable error."""
    text = " ".join(str(text).split())
    return text if len(text) <= most else f"{text[: most // 2]}...{text[-most // 2 :]}"


def parse_axis(spec: str) -> Axis:
    """``'KEY=[V1, V2]'`` -> Axis; the values are Python literals (a bare literal is a one-value axis)."""
    key, sep, text = spec.partition("=")
    key = key.strip()
    # A pasted flag of a MB is shown shortened: the error stays one readable line.
    shown_spec, shown_key, shown = map(_short, (spec, key, text))
    if not sep or not key:
        raise SweepError(
            f"--sweep={shown_spec}: expected KEY=[VALUE, ...], e.g. --sweep='optimizer.learning_rate=[1e-3,5e-4]'"
        )
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise SweepError(
            f"--sweep {shown_key}={shown}: not a Python literal; expected a list like [1e-3, 5e-4] "
            "(strings quoted: ['none', 'oversample'])"
        ) from None
    values = tuple(value) if isinstance(value, list) else (value,)
    if not values:
        raise SweepError(f"--sweep {shown_key}={shown}: an empty list; give at least one value")
    if len(set(map(repr, values))) < len(values):
        raise SweepError(f"--sweep {shown_key}={shown}: a value is repeated; each point of the grid must differ")
    return Axis(key, values)


def _keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every leaf key of ``config``, dotted."""
    found = []
    for name in config.keys():
        value = config[name]
        if isinstance(value, ml_collections.ConfigDict):
            found += _keys(value, f"{prefix}{name}.")
        else:
            found.append(prefix + name)
    return found


def _override(config: ml_collections.ConfigDict, key: str, value) -> None:
    """Sets ``config.<key>`` to ``value`` in place; a SweepError naming the key when the schema has no such leaf."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node[part] if part in node and isinstance(node[part], ml_collections.ConfigDict) else None
        if node is None:
            break
    if node is None or leaf not in node:
        close = difflib.get_close_matches(key, _keys(config), n=3, cutoff=0.85)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise SweepError(
            f"--sweep {_short(key)}: not a config key (the schema, effnet_jax/train/config.py, lists every key){hint}"
        )
    if isinstance(node[leaf], ml_collections.ConfigDict):
        raise SweepError(f"--sweep {key}: names a group of keys; sweep one of its keys ({key}.NAME)")
    try:
        node[leaf] = value
    except (TypeError, ValueError) as e:
        raise SweepError(
            f"--sweep {key}: the value {_short(repr(value))} does not fit config.{key} "
            f"({_short(' '.join(str(e).split()))})"
        ) from None


def point_slug(overrides: dict) -> str:
    """A folder name for a point: its overrides made file-safe, then a hash of them (no two points share one)."""
    text = ",".join(f"{k}={v!r}" for k, v in overrides.items())
    return f"{slug(text, 60)}-{short_hash(text)}"


def plan(config: ml_collections.ConfigDict, workdir: str, axes: list[Axis]) -> list[Point]:
    """The grid's points in order (the last axis varies fastest), each config checked; SweepError or ValueError if not."""
    if not axes:
        raise SweepError("no --sweep flag: give at least one, e.g. --sweep='seed=[0,1]'")
    seen = set()
    for axis in axes:
        if axis.key in seen:
            raise SweepError(f"--sweep {axis.key}: given twice; put all its values in one list")
        seen.add(axis.key)
    size = math.prod(len(axis.values) for axis in axes)
    if size > MAX_POINTS:  # counted before the product: each point holds a copy of the config
        shown = " x ".join(f"{len(axis.values)} ({axis.key})" for axis in axes)
        raise SweepError(
            f"--sweep: a grid of {shown} = {size:,} points, more than the {MAX_POINTS:,} one sweep may train"
        )
    points_dir = os.path.join(layout_lib.absolute(workdir), POINTS)
    points = []
    for values in itertools.product(*(axis.values for axis in axes)):
        overrides = {axis.key: value for axis, value in zip(axes, values)}
        point_config = copy.deepcopy(config)
        for key, value in overrides.items():
            _override(point_config, key, value)
        validate_config(point_config)  # 'config.KEY=VALUE: expected ...', naming the key
        name = point_slug(overrides)
        points.append(Point(overrides, name, point_config, os.path.join(points_dir, name)))
    return points


# --------------------------------------------------------------------------------------------------
# Training and scoring each point.
# --------------------------------------------------------------------------------------------------
def point_finished(point: Point) -> bool:
    """True when the point's run reached its last step (or stopped early); for a soup of seeds, when the soup is made."""
    if not epath.Path(point.workdir).exists():
        return False
    if soup_seeds(point.config) > 1:
        return epath.Path(Layout(point.workdir).soup).is_file()
    return run_finished(point.workdir, planned_steps(point.config))


def _report(run: runs.Run, split: str, progress: bool, bootstrap_resamples: int) -> dict:
    """effnet-eval's report of ``split`` at the run's step (without TTA): the one in eval/, else made now."""
    path = os.path.join(output_dir(run, split, tta_lib.parse_tta(None)), EVAL_REPORT)
    for found, report in run.eval_reports():
        if found == path and report.get("step") == run.step:
            _check_scores(report, path)
            return report
    return evaluate_checkpoint(run, split, progress=progress, bootstrap_resamples=bootstrap_resamples).to_json()


def _check_scores(report: dict, path: str) -> None:
    """A stored report holds what a row copies (a downloaded or hand-edited sweep folder may not): else one line naming it."""
    operating = report.get("metrics", {}).get("operating")  # check_report: metrics and its entries are objects
    problems = [] if operating is not None else ["metrics.operating"]
    problems += [f"metrics.operating.{key}" for _, key in SCORES if operating is not None and key not in operating]
    if report.get("operating_threshold") is None:
        problems.insert(0, "operating_threshold")
    if problems:
        raise SweepFolderError(
            f"{path}: no {problems[0]}; not a report effnet-eval wrote for a binary run "
            "(remove it and rerun effnet-sweep to evaluate the point again)"
        )


def score_point(point: Point, progress: bool = False, bootstrap_resamples: int = intervals_lib.DEFAULT_RESAMPLES):
    """The point's columns from its best checkpoint: step, operating threshold, and each split's metrics there."""
    run = runs.open(point.workdir, "best")
    row = {"step": run.step}
    for split in _splits(run.config):
        report = _report(run, split, progress, bootstrap_resamples)
        row.setdefault("operating_threshold", report["operating_threshold"])
        at = report["metrics"]["operating"]
        row.update({f"{split}_{name}": at[key] for name, key in SCORES})
    return row


def run_sweep(
    config: ml_collections.ConfigDict,
    workdir: str,
    axes: list[Axis],
    progress: bool | None = None,
    bootstrap_resamples: int = intervals_lib.DEFAULT_RESAMPLES,
) -> SweepResult:
    """Trains every point of the grid of ``axes`` over ``config`` under ``workdir``; writes sweep.csv and sweep.md.

    A rerun skips finished points and resumes the others. A point whose loss became
    non-finite gets a row saying so, and the sweep goes on; any other training error stops it.
    """
    points = plan(config, workdir, axes)
    if jax.process_count() > 1:
        raise ValueError("effnet-sweep trains its points in one process; run it without jax.distributed")
    progress = config.get("progress_bar", True) if progress is None else progress
    workdir = layout_lib.absolute(workdir)
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    lock = workdir_lock.lock_workdir(workdir, True)
    try:
        _refuse_linked_points(workdir, points)
        _check_base_config(workdir, config, axes)
        rows, trained = [], []
        for i, point in enumerate(points, 1):
            status = "done"
            if point_finished(point):
                log.info("point %d of %d (%s) finished in %s: not retrained", i, len(points), point.slug, point.workdir)
            else:
                log.info("point %d of %d: %s in %s", i, len(points), _describe(point.overrides), point.workdir)
                trained.append(point.slug)
                try:
                    run_experiment(point.config, point.workdir)
                except NonFiniteLossError as e:
                    log.warning("point %s: %s; the sweep goes on", point.slug, e)
                    status = "non-finite loss"
                if status == "done" and not point_finished(point):
                    status = "unfinished"  # config.stop_after_steps: a rerun resumes it
            row = {**point.overrides, "point": point.slug, "status": status}
            if status == "done":
                row.update(score_point(point, progress, bootstrap_resamples))
            rows.append(row)
        csv_path, md_path = _write(workdir, columns(points), rows)
        return SweepResult(workdir, rows, tuple(trained), csv_path, md_path)
    finally:
        if lock is not None:
            lock.release()


def _refuse_linked_points(workdir: str, points: list[Point]) -> None:
    """A SweepFolderError naming ``points/`` or a point's folder when it is a link (a downloaded half-done sweep).

    A point's run is read, resumed and written where its folder is: through a planted link, the
    sweep would score a run elsewhere as this one's, or train into a folder it was not given.
    """
    if "://" in workdir:
        return
    for path in (os.path.join(workdir, POINTS), *(p.workdir for p in points)):
        if os.path.islink(path):
            raise SweepFolderError(
                f"{path}: a link to {os.path.realpath(path)}; a sweep's points are folders in it, never read or "
                "written through a link"
            )


def _flat_config(config: ml_collections.ConfigDict, axes: list[Axis]) -> dict:
    """The config as flat JSON values by dotted key, less the swept keys (each point sets them) and RERUNNABLE_KEYS."""
    dropped = RERUNNABLE_KEYS | {axis.key for axis in axes}
    return {key: value for key, value in flat_values(config).items() if key not in dropped}


def _check_base_config(workdir: str, config: ml_collections.ConfigDict, axes: list[Axis]) -> None:
    """Writes DIR/sweep_config.json on a first run; refuses a rerun whose config differs from it.

    A point's folder is named by its overrides alone, so without this a rerun with another
    --config or --config.KEY would skip the finished points and tabulate them as its own.
    """
    path = os.path.join(workdir, BASE_CONFIG)
    current = _flat_config(config, axes)
    if "://" in workdir or not os.path.lexists(path):
        if "://" not in workdir:
            with open_output(path, "w") as f:
                json.dump(current, f, indent=1, sort_keys=True)
        return
    try:
        stored = read_json_file(path, MAX_BASE_CONFIG_BYTES, SweepFolderError)
    except OSError as e:
        raise SweepFolderError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(stored, dict):
        raise SweepFolderError(f"{path}: not a JSON object; not a file effnet-sweep wrote")
    stored = {key: value for key, value in stored.items() if key not in RERUNNABLE_KEYS | {a.key for a in axes}}
    changed = sorted(
        key for key in set(stored) | set(current) if stored.get(key, _MISSING) != current.get(key, _MISSING)
    )
    if changed:
        shown = "; ".join(
            f"{_short(key, 80)}: {_shown(stored.get(key, _MISSING))} then, {_shown(current.get(key, _MISSING))} now"
            for key in changed[:3]
        )
        more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
        raise SweepConfigChangedError(
            f"{workdir}: swept before under another config ({shown}{more}); its finished points would be "
            "reused as this config's. Sweep into another --workdir, or rerun with the config in "
            f"{BASE_CONFIG}"
        )


_MISSING = object()


def _shown(value) -> str:
    return "unset" if value is _MISSING else _short(repr(value), 60)


def _describe(overrides: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in overrides.items())


# --------------------------------------------------------------------------------------------------
# sweep.csv and sweep.md
# --------------------------------------------------------------------------------------------------
def _splits(config: ml_collections.ConfigDict) -> list[str]:
    """The splits a point is scored on: validation, then each external split."""
    return [VALIDATION, *external.split_names(config.data)]


def columns(points: list[Point]) -> list[str]:
    """sweep.csv's header: the overrides, the point's folder and state, then each split's scores."""
    names = [*points[0].overrides, "point", "status", "step", "operating_threshold"]
    for point in points:
        for split in _splits(point.config):
            names += [f"{split}_{name}" for name, _ in SCORES if f"{split}_{name}" not in names]
    return names


def _csv_value(value):
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def _md_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not isinstance(value, bool):
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:g}"
    return str(value)


def _write(workdir: str, header: list[str], rows: list[dict]) -> tuple[str, str]:
    csv_path, md_path = os.path.join(workdir, CSV), os.path.join(workdir, MARKDOWN)
    with open_output(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([csv_cell(c) for c in header])
        for row in rows:
            writer.writerow([csv_cell(_csv_value(row.get(c))) for c in header])
    table = markdown_table(header, [[_md_value(row.get(c)) for c in header] for row in rows])
    with open_output(md_path, "w") as f:
        f.write(f"# Sweep: {len(rows)} points (metrics at each run's operating threshold)\n\n{table}\n")
    return csv_path, md_path
