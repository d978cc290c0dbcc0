"""Orbax checkpoints of a training run: save, resume, and read back a step for inference.

Layout, under ``WORKDIR/checkpoints/<step>/`` (one orbax ``Composite``)::

    state/      the TrainState (step, params, batch_stats, opt_state, ema_*, rng)
    data_iter/  the grain training iterator's state (JSON), so resuming replays no batch
    config/     the run's config (JSON), as given (data.name 'auto' resolved)
    run/        the run record (JSON): image size, the weights' input mean/std, train class counts
    metrics/    validation metrics, present on steps that were evaluated

Saves are asynchronous and atomic: orbax writes into a temporary directory and
renames it when complete, so a run killed at any moment (mid-save too) leaves the
previous checkpoints intact. The last ``keep`` checkpoints are kept, plus the
best one by ``best_metric``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import reprlib
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util
from orbax.checkpoint import checkpoint_managers

from effnet_jax import limits
from effnet_jax.labels import validate_class_names
from effnet_jax.models import build_model, get_variant
from effnet_jax.models.efficientnet import variable_shapes
from effnet_jax.progress import quiet_closed_loop_callbacks, quiet_library_noise
from effnet_jax.runs import model as model_lib
from effnet_jax.runs import values
from effnet_jax.runs.layout import Layout
from effnet_jax.runs.record import RunRecord
from effnet_jax.weights.readers import check_orbax_json, check_tree, read_json_file

ITEMS = ("state", "data_iter", "config", "run")


def checkpoint_dir(workdir: str) -> str:
    """Where a run's checkpoints live (absolute)."""
    return Layout(workdir).checkpoints


def _handlers():
    return {
        "state": ocp.StandardCheckpointHandler(),
        "data_iter": ocp.JsonCheckpointHandler(),
        "config": ocp.JsonCheckpointHandler(),
        "run": ocp.JsonCheckpointHandler(),
    }


class Checkpointer:
    """A run's CheckpointManager: async saves, keep-last-K plus best, automatic resume."""

    def __init__(
        self,
        workdir: str,
        keep: int = 3,
        best_metric: str | None = "auc",
        best_mode: str = "max",
        async_save: bool = True,
        read_only: bool = False,
    ):
        if best_mode not in ("max", "min"):
            raise ValueError(f"config.best_mode={best_mode!r}: expected 'max' or 'min'")
        self.directory = checkpoint_dir(workdir)
        self.best_metric = best_metric
        policies = [checkpoint_managers.LatestN(max(1, keep))]
        best_fn = None
        if best_metric:
            sign = 1.0 if best_mode == "max" else -1.0

            def best_fn(metrics, _name=best_metric, _sign=sign):
                if _name not in metrics:
                    raise KeyError(f"config.best_metric={_name!r} is not a validation metric; have {sorted(metrics)}")
                return _sign * float(metrics[_name])

            # BestN sorts ascending and keeps the tail, so the signed metric is "higher is better".
            policies.append(
                checkpoint_managers.BestN(get_metric_fn=best_fn, n=1, keep_checkpoints_without_metrics=False)
            )
        if read_only:
            quiet_library_noise()  # orbax warns that a read-only manager is read only
        quiet_closed_loop_callbacks()  # a damaged checkpoint's failed read: one line, not hundreds of tracebacks
        options = ocp.CheckpointManagerOptions(
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            best_fn=best_fn,
            best_mode="max",
            enable_async_checkpointing=async_save,
            create=not read_only,
            read_only=read_only,
            # Temporary directories left by a killed save are removed on the next start.
            cleanup_tmp_directories=not read_only,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=ITEMS, item_handlers=_handlers()
        )

    # -- queries -------------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The best evaluated step, or the latest when none carries metrics."""
        best = self.manager.best_step() if self.best_metric else None
        return self.latest_step() if best is None else best

    # -- save / restore ----------------------------------------------------------------------
    def save(
        self,
        step: int,
        state,
        data_state: Any,
        config: ml_collections.ConfigDict,
        metrics: dict | None = None,
        run: RunRecord | None = None,
    ) -> bool:
        """Starts an async save of ``state`` (host or replicated arrays) at ``step``, with the run record if given."""
        items = dict(
            state=ocp.args.StandardSave(state),
            data_iter=ocp.args.JsonSave(encode_data_state(data_state)),
            config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
        )
        if run is not None:
            items["run"] = ocp.args.JsonSave(run.to_json())
        args = ocp.args.Composite(**items)
        scalars = None if metrics is None else {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        return self.manager.save(int(step), args=args, metrics=scalars, force=True)

    def restore(self, step: int, abstract_state):
        """``(state, data_state, config)`` at ``step``; arrays land with ``abstract_state``'s shardings."""
        out = self.manager.restore(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data_iter=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore(),
            ),
        )
        return out["state"], decode_data_state(out["data_iter"]), ml_collections.ConfigDict(out["config"])

    def restore_config(self, step: int) -> ml_collections.ConfigDict:
        out = self.manager.restore(int(step), args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return ml_collections.ConfigDict(out["config"])

    def restore_run(self, step: int) -> RunRecord | None:
        """The run record saved at ``step``; None for checkpoints written before run records existed."""
        if not (epath.Path(self.directory) / str(int(step)) / "run").exists():
            return None
        out = self.manager.restore(int(step), args=ocp.args.Composite(run=ocp.args.JsonRestore()))
        return RunRecord.from_json(out["run"], f"{self.directory}/{int(step)}/run")

    def restore_data_state(self, step: int) -> Any:
        """The training data iterator's state saved at ``step``."""
        out = self.manager.restore(int(step), args=ocp.args.Composite(data_iter=ocp.args.JsonRestore()))
        return decode_data_state(out["data_iter"])

    def restore_state_as_saved(self, step: int, device=None):
        """The saved state as a nested dict, every array on ``device`` (default: the first device).

        Built from the checkpoint's own metadata, so it needs neither the optimizer
        nor the number of devices the run was trained on.
        """
        device = device or jax.local_devices()[0]
        sharding = jax.sharding.SingleDeviceSharding(device)
        meta = self.manager.item_metadata(int(step))["state"]
        meta = getattr(meta, "tree", meta)
        # The shapes below are the checkpoint's own word: held to what its config's model needs
        # before orbax allocates them (a 160 KB checkpoint can declare gigabytes of zeros).
        check_declared_state(f"{self.directory}/{int(step)}", meta, self.restore_config(step))
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding),
            meta,
            is_leaf=_is_array_metadata,
        )
        out = self.manager.restore(int(step), args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        return out["state"]

    def wait(self):
        """Blocks until pending async saves are committed."""
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()


def _is_array_metadata(m) -> bool:
    return hasattr(m, "shape") and hasattr(m, "dtype")


# A train state holds its weights several times over: params and batch_stats, their EMA copies,
# and the optimizer's moments (Adam keeps two); anything past this many copies of the model's
# variables is not a state effnet-train wrote.
STATE_COPIES = 8
# Train-state collections that hold the model's own variables, by the model collection they mirror.
_VARIABLE_COLLECTIONS = {
    "params": "params",
    "ema_params": "params",
    "batch_stats": "batch_stats",
    "ema_batch_stats": "batch_stats",
}


def check_declared_state(where: str, meta, config) -> None:
    """Refuses, in a ValueError naming ``where``, saved-state metadata that declares arrays the run cannot have.

    Orbax allocates every array at the shape its metadata declares, and a compressed chunk of
    zeros costs nothing on disk: a downloaded checkpoint of kilobytes could make the reader
    allocate gigabytes. So, before anything is read, each weight of the config's model must
    have the model's shape, and the whole state (plus its largest chunk, which tensorstore
    decodes whole) must fit ``STATE_COPIES`` copies of the model's variables, or the
    decoded-size budget (``limits.budget()``) if that is larger; a state over the budget must
    also fit the memory the machine has available.
    """
    expected = _variable_shapes(config)
    total, largest_chunk = 0, 0
    for path, m in jax.tree_util.tree_flatten_with_path(meta, is_leaf=_is_array_metadata)[0]:
        if not _is_array_metadata(m):
            continue
        keys = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        name = "/".join(keys)
        shape, chunk = _dims(m.shape, where, name), getattr(getattr(m, "storage", None), "chunk_shape", None)
        itemsize = np.dtype(m.dtype).itemsize
        total += math.prod(shape) * itemsize
        if chunk is not None:
            largest_chunk = max(largest_chunk, math.prod(_dims(chunk, where, name)) * itemsize)
        want = expected.get((_VARIABLE_COLLECTIONS.get(keys[0]), *keys[1:])) if keys else None
        if want is not None and shape != want:
            raise ValueError(
                f"{where}: {name} is declared {shape} in the checkpoint's metadata, but {config.model.name} "
                f"as its config builds it has {want}; refusing to allocate it"
            )
    model_bytes = sum(math.prod(s) * 4 for s in expected.values())  # float32, however the run computed
    allowance = max(limits.budget(), STATE_COPIES * model_bytes)
    free = limits.available_memory()
    declared = total + largest_chunk
    # The model comes from the run's own config.json: a downloaded one naming a large ensemble would
    # otherwise raise the allowance as far as it likes. A state that cannot fit in memory cannot be
    # restored anyway: refuse it in one line instead of driving the machine into swap or the OOM killer.
    if free is not None and limits.budget() < declared <= allowance and declared > free:
        raise ValueError(
            f"{where}: the saved state's declared arrays would take {declared:,} bytes, more than the "
            f"{free:,} bytes of memory this machine has available; refusing to allocate them"
        )
    limits.check(where, declared, "the saved state's declared arrays", ValueError, allowance)


def check_state_variables(where: str, state: dict, config) -> None:
    """Refuses, in a ValueError naming ``where`` and the variable, a restored state the config's model cannot use.

    A downloaded checkpoint may leave a weight out (flax then fails deep in the forward pass
    with a traceback), store one as integers, or hold NaN or inf: every variable of the model
    must be there, in ``params`` and ``batch_stats`` and in both EMA copies when either is
    kept, as finite floating-point numbers. Called by the commands that write what they
    computed from the weights into a new run (effnet-adapt, effnet-soup).
    """
    expected = _variable_shapes(config)
    collections = ["params", "batch_stats"]
    if state.get("ema_params") is not None or state.get("ema_batch_stats") is not None:
        collections += ["ema_params", "ema_batch_stats"]
    for collection in collections:
        found = state.get(collection)
        flat = traverse_util.flatten_dict(found) if isinstance(found, dict) and found else {}
        for path in expected:
            if path[0] != _VARIABLE_COLLECTIONS[collection]:
                continue
            name = "/".join((collection, *path[1:]))
            value = flat.get(path[1:])
            if value is None:
                raise ValueError(
                    f"{where}: the saved state has no {name}, which {config.model.name} as its config builds it "
                    "has; not a checkpoint of this run's model"
                )
            dtype = value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype
            if not jax.numpy.issubdtype(dtype, jax.numpy.floating):
                raise ValueError(f"{where}: {name} is stored as {dtype}; expected floating-point weights")
            if not bool(np.isfinite(np.asarray(value, np.float32)).all()):
                raise ValueError(f"{where}: {name} holds NaN or inf; the weights of a usable model are finite")


def _dims(shape, where: str, name: str) -> tuple[int, ...]:
    shape = tuple(shape)
    if not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
        raise ValueError(f"{where}: {name} declares shape {reprlib.repr(shape)}; expected dimensions >= 0")
    return tuple(int(d) for d in shape)


def _variable_shapes(config) -> dict[tuple, tuple[int, ...]]:
    """``{(collection, *path): shape}`` of the variables the config's model has (an ensemble's stacked).

    Traced, never allocated. Empty when the config builds no model (an old or damaged one):
    the state is then held to the budget alone.
    """
    try:
        model = build_model(
            config.model.name, num_classes=model_lib.num_classes(config), **model_lib.model_kwargs(config)
        )
        shapes = variable_shapes(model)
        size = model_lib.ensemble_size(config) or 0
    except Exception:  # noqa: BLE001  any config that builds no model: the budget alone applies
        return {}
    lead = (size,) if size >= 2 else ()
    return {path: (*lead, *leaf.shape) for path, leaf in traverse_util.flatten_dict(shapes).items()}


class CheckpointMismatchError(ValueError):
    """A workdir's checkpoint does not fit the config asked to resume it."""


# Keys that fix the train state's tree: a change makes the checkpoint unrestorable.
_STRUCTURE_KEYS = ("model.name", "loss", "optimizer.name")


def check_resumable(ckpt: Checkpointer, step: int, config: ml_collections.ConfigDict) -> None:
    """Raises ``CheckpointMismatchError`` when ``config`` changes a key that fixes the saved state's tree.

    Reads the saved config alone, so a trainer can refuse before it builds (and compiles) a model.
    """
    saved = ckpt.restore_config(step)
    for key in _STRUCTURE_KEYS:
        was, now = _get(saved, key), _get(config, key)
        if was is not None and now is not None and was != now:
            raise CheckpointMismatchError(
                f"{ckpt.directory}/{step} was saved with {key}={was!r} but the config asks for {now!r}: resume "
                f"with --config.{key}={was!r}, or start the new run in another --workdir"
            )


def check_workdir_resumable(workdir: str, config: ml_collections.ConfigDict) -> None:
    """``check_resumable`` on a workdir's latest checkpoint, if it has one (nothing is kept open)."""
    if not os.path.isdir(checkpoint_dir(workdir)):
        return
    # A downloaded run resumed: its checkpoints are walked as every reader walks them (a FIFO among
    # them blocked the restore forever, a link out of the run was read), in one line, exit status 4.
    try:
        check_checkpoints(workdir)
    except ValueError as e:
        raise CheckpointMismatchError(str(e)) from None
    ckpt = Checkpointer(workdir, best_metric=None, async_save=False, read_only=True)
    try:
        step = ckpt.latest_step()
        if step is not None:
            check_resumable(ckpt, step, config)
    finally:
        ckpt.close()


def restore_to_resume(ckpt: Checkpointer, step: int, abstract_state, config: ml_collections.ConfigDict):
    """``Checkpointer.restore`` for resuming, with a one-line error when the config no longer fits it."""
    check_resumable(ckpt, step, config)
    try:
        return ckpt.restore(step, abstract_state)
    except (ValueError, KeyError, TypeError) as e:
        # Orbax's own message lists the whole tree (tens of KB); its first line says enough.
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise CheckpointMismatchError(
            f"{ckpt.directory}/{step} does not fit the current config's train state ({first}); was the model, "
            "optimizer or EMA changed since it was saved? Resume with the run's config.json or use another "
            "--workdir"
        ) from e


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "get"):
            return None
        node = node.get(part)
    return node


def encode_data_state(state: Any):
    """A grain iterator state as JSON (DataLoader iterators give bytes, datasets give dicts)."""
    if isinstance(state, bytes):
        return {"bytes": state.decode("utf-8")}
    return {"value": state}


def decode_data_state(blob: dict):
    if "bytes" in blob:
        return blob["bytes"].encode("utf-8")
    return blob["value"]


def resolve_step(ckpt: Checkpointer, checkpoint: str | int, workdir: str) -> int:
    """'best', 'latest' or a step number -> an existing step; a clear error otherwise."""
    steps = ckpt.all_steps()
    if not steps:
        raise FileNotFoundError(
            f"no checkpoints in workdir {workdir!r} (looked in {ckpt.directory}); train first with "
            f"`effnet-train --config=... --workdir={workdir}`"
        )
    if checkpoint == "latest":
        return ckpt.latest_step()
    if checkpoint == "best":
        return ckpt.best_step()
    try:
        step = int(checkpoint)
    except (TypeError, ValueError):
        raise ValueError(f"checkpoint={checkpoint!r}: expected 'best', 'latest' or a step number") from None
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint at step {step} in {ckpt.directory}; available: {steps}")
    return step


# The JSON files of one orbax step folder, read by orbax with Python's json (a deep nesting is a
# RecursionError deep inside orbax): checked first, as any JSON file of a downloaded run (the
# state's own, array_metadatas/ included, by ``readers.check_orbax_json``).
_STEP_JSON = ("_CHECKPOINT_METADATA", "config/metadata", "run/metadata", "data_iter/metadata", "metrics/metrics")


def check_checkpoints(workdir: str) -> None:
    """Refuses, in one ValueError naming the entry, a local checkpoints folder that orbax should not read.

    A downloaded run may hold links out of the run (its checkpoints/ folder too), FIFOs
    (a read that never returns), or JSON files nested or sized to exhaust the interpreter:
    all are refused before orbax opens anything.
    """
    directory = checkpoint_dir(workdir)
    if "://" in directory or not os.path.isdir(directory):
        return
    top, target = os.path.realpath(workdir), os.path.realpath(directory)
    if os.path.commonpath([top, target]) != top:
        raise ValueError(f"{directory}: a link to {target}, outside the run {workdir}; refusing to read through it")
    _check_step_count(directory)
    check_tree(directory)
    for step in os.listdir(directory):
        _check_step_name(directory, step)
        for name in _STEP_JSON:
            path = os.path.join(directory, step, name)
            if os.path.isfile(path):
                value = read_json_file(path)
                if name == "_CHECKPOINT_METADATA":
                    _check_step_metadata(value, path)
        check_orbax_json(os.path.join(directory, step, "state"))


# A run keeps its last ``keep_checkpoints`` steps (at most 4,000: train.config.MAX_KEEP_CHECKPOINTS) and
# its best. Orbax reads every step folder when a CheckpointManager opens, so a downloaded folder of
# thousands of empty ones (kilobytes) would stall every open: more entries than this are refused first.
MAX_CHECKPOINT_ENTRIES = 1 << 12


def _check_step_count(directory: str) -> None:
    with os.scandir(directory) as entries:
        for count, _ in enumerate(entries, 1):
            if count > MAX_CHECKPOINT_ENTRIES:
                raise ValueError(
                    f"{directory}: more than {MAX_CHECKPOINT_ENTRIES:,} entries; a run keeps a few checkpoints "
                    "(config.keep_checkpoints and its best), not this many"
                )


# The step counter is an int32: a step folder numbered beyond it was never written by a run.
_MAX_STEP = 2**31 - 1


def _check_step_name(directory: str, name: str) -> None:
    """Refuses a step folder named by digits that orbax would not write: ``007`` (which orbax skips,
    leaving "no checkpoints" to explain), or a number beyond the step counter (taken as the latest).

    Other names (a killed save's ``<step>.orbax-checkpoint-tmp-<time>`` folder among them) are left to orbax.
    """
    path = os.path.join(directory, name)
    if not (name.isascii() and name.isdigit() and os.path.isdir(path)):
        return
    if int(name) > _MAX_STEP:  # a file name has at most 255 characters: int() is cheap
        raise ValueError(
            f"{path}: a step folder numbered beyond the step counter's range (0 to {_MAX_STEP}); "
            "not written by a run: remove or rename it"
        )
    if name != str(int(name)):
        raise ValueError(
            f"{path}: a step folder named {name!r}, which orbax does not list (steps are named without leading "
            f"zeros, e.g. {str(int(name))!r}): rename or remove it"
        )


def _check_step_metadata(value, path: str) -> None:
    """A step's ``_CHECKPOINT_METADATA`` as orbax reads it when it lists the steps, and its metrics numbers.

    Orbax parses every step's file when a CheckpointManager opens, outside any one read: a
    list there, or a timestamp that is not an integer, was a ValueError naming no file.
    """
    if not isinstance(value, dict):
        raise ValueError(f"{path}: a {type(value).__name__}, expected a JSON object")
    try:
        from orbax.checkpoint._src.metadata import step_metadata_serialization
    except ImportError:  # another orbax: its own reader has the last word
        step_metadata_serialization = None
    if step_metadata_serialization is not None:
        try:
            step_metadata_serialization.deserialize(value)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"{path}: not a checkpoint's metadata ({e})") from None
    # The best step is chosen by these: effnet_jax saves floats (NaN included), never text or lists.
    for key, metric in values.mapping(value.get("metrics"), f"{path}: metrics").items():
        if isinstance(metric, bool) or not isinstance(metric, (int, float)):
            raise ValueError(f"{path}: metrics.{key}={reprlib.repr(metric)}: expected a number")


def _unreadable(ckpt: Checkpointer, step, error: Exception) -> ValueError:
    """One line for a checkpoint orbax or tensorstore could not read (truncated, missing files, damaged metadata)."""
    first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    return ValueError(f"{ckpt.directory}/{step}: cannot read this checkpoint (damaged or incomplete?): {first}")


@dataclasses.dataclass
class SavedCheckpoint:
    """One checkpoint of a run, as saved: the state is a nested dict of arrays on one device."""

    workdir: str
    step: int
    config: ml_collections.ConfigDict
    run: RunRecord
    state: dict | None


def read_checkpoint(workdir: str, checkpoint: str | int = "best", with_state: bool = True) -> SavedCheckpoint:
    """The checkpoint ``checkpoint`` ('best', 'latest' or a step) of the run in ``workdir``, on the first local device.

    'best' is by the run's own ``best_metric`` (the latest if none was evaluated). Needs
    neither the optimizer nor the device count the run trained on. Runs saved before run
    records existed get theirs from their config. ``with_state=False`` reads the step,
    config and run record alone (``state`` None): a look before restoring the arrays.
    """
    if not epath.Path(checkpoint_dir(workdir)).is_dir():
        raise FileNotFoundError(
            f"no checkpoints in workdir {workdir!r}: {checkpoint_dir(workdir)} does not exist; train first with "
            f"`effnet-train --config=... --workdir={workdir}`"
        )
    check_checkpoints(workdir)
    ckpt = Checkpointer(workdir, best_metric=None, async_save=False, read_only=True)
    try:
        step = resolve_step(ckpt, "latest", workdir)
        config = _restored(ckpt, step, lambda: ckpt.restore_config(step))
    finally:
        ckpt.close()
    _check_config(config, f"{ckpt.directory}/{step}/config")
    # Reopen with the run's own best metric so 'best' means what the run meant.
    ckpt = Checkpointer(
        workdir,
        best_metric=config.get("best_metric"),
        best_mode=config.get("best_mode", "max"),
        async_save=False,
        read_only=True,
    )
    try:
        step = resolve_step(ckpt, checkpoint, workdir)
        config = _restored(ckpt, step, lambda: ckpt.restore_config(step))
        _check_config(config, f"{ckpt.directory}/{step}/config")
        run = _restored(ckpt, step, lambda: ckpt.restore_run(step))
        state = _restored(ckpt, step, lambda: ckpt.restore_state_as_saved(step)) if with_state else None
    finally:
        ckpt.close()
    if run is None:
        run = RunRecord.from_legacy_config(config, get_variant(config.model.name), f"{ckpt.directory}/{step}/config")
    return SavedCheckpoint(workdir=workdir, step=step, config=config, run=run, state=state)


def read_state(workdir: str, step: int) -> dict:
    """The state saved at ``step`` of the run in ``workdir``, as a nested dict on the first local device."""
    check_checkpoints(workdir)
    ckpt = Checkpointer(workdir, best_metric=None, async_save=False, read_only=True)
    try:
        return _restored(ckpt, step, lambda: ckpt.restore_state_as_saved(step))
    finally:
        ckpt.close()


def read_data_state(workdir: str, step: int) -> Any:
    """The training data iterator's state saved at ``step`` of the run in ``workdir``."""
    check_checkpoints(workdir)
    ckpt = Checkpointer(workdir, best_metric=None, async_save=False, read_only=True)
    try:
        return _restored(ckpt, step, lambda: ckpt.restore_data_state(step))
    finally:
        ckpt.close()


def _restored(ckpt: Checkpointer, step, read):
    """``read()``, with whatever orbax or tensorstore raise for a damaged checkpoint as one ValueError naming it.

    Tensorstore raises bare ``Exception``s (a truncated chunk, a missing manifest); our own
    errors (a bad run record, a missing step) pass as they are.
    """
    try:
        return read()
    except (FileNotFoundError, ValueError) as e:
        if (isinstance(e, FileNotFoundError) and e.errno is None) or str(e).startswith(ckpt.directory):
            raise
        raise _unreadable(ckpt, step, e) from e
    except Exception as e:  # noqa: BLE001  tensorstore's errors are plain Exceptions
        raise _unreadable(ckpt, step, e) from e


def _check_config(config, where: str) -> None:
    """The saved config must name a model: everything that reads a run builds it from ``model.name``."""
    model = config.get("model")
    name = model.get("name") if hasattr(model, "get") else None
    if not isinstance(name, str):
        raise ValueError(f"{where}: model.name={reprlib.repr(name)}: expected a variant name")
    try:
        get_variant(name)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    # The model is built from these too: a downloaded config claiming a million classes, or an
    # ensemble of a million members, would size the head (or the stacked weights) by them.
    data = config.get("data")
    if data is not None and not isinstance(data, ml_collections.ConfigDict):
        raise ValueError(f"{where}: data={reprlib.repr(data)}: expected the data section of a config (a JSON object)")
    names = data.get("class_names") if data is not None else None
    if names:
        if not isinstance(names, (list, tuple)):
            raise ValueError(f"{where}: data.class_names={reprlib.repr(names)}: expected a list of class names")
        validate_class_names(names, f"{where}: data.class_names")
    # Read before 'best' is resolved: a bad value would otherwise be named as a config key, not this file.
    if config.get("best_mode", "max") not in ("max", "min"):
        raise ValueError(f"{where}: best_mode={reprlib.repr(config.get('best_mode'))}: expected 'max' or 'min'")
    # Read again when a run made from this one is saved (effnet-adapt, effnet-soup: write_checkpoint).
    keep = config.get("keep_checkpoints", 3)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"{where}: keep_checkpoints={reprlib.repr(keep)}: expected an integer >= 1")
    if not isinstance(config.get("best_metric") or "", str):
        raise ValueError(f"{where}: best_metric={reprlib.repr(config.get('best_metric'))}: expected a metric name")
    soup = config.get("soup")
    if soup is not None:
        members = soup.get("members") if hasattr(soup, "get") else None
        if not (
            isinstance(members, (list, tuple))
            and 2 <= len(members) <= model_lib.MAX_MEMBERS
            and all(isinstance(m, str) for m in members)
        ):
            raise ValueError(
                f"{where}: soup.members={reprlib.repr(members)}: expected a list of 2 to {model_lib.MAX_MEMBERS} "
                "member run folders"
            )
        if soup.get("combine", "weights") not in ("weights", "logits"):
            raise ValueError(
                f"{where}: soup.combine={reprlib.repr(soup.get('combine'))}: expected 'weights' or 'logits'"
            )


def write_checkpoint(
    workdir: str,
    step: int,
    state,
    data_state: Any,
    config: ml_collections.ConfigDict,
    metrics: dict | None = None,
    run: RunRecord | None = None,
) -> None:
    """Saves one checkpoint made outside training (a soup's, an adapted run's), with the config's keep and best rules, and waits for it."""
    ckpt = Checkpointer(
        workdir,
        keep=config.get("keep_checkpoints", 3),
        best_metric=config.get("best_metric") or None,
        best_mode=config.get("best_mode", "max"),
        async_save=False,
    )
    try:
        ckpt.save(step, state, data_state, config, metrics, run=run)
        ckpt.wait()
    finally:
        ckpt.close()
