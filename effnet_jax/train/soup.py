"""Model soups of seeds: one model whose weights are the uniform average of fine-tuned runs (Wortsman et al. 2022).

    members' checkpoints (each its own 'best') -> same model, classes, input and data? same tree?
      -> mean of params and batch_stats (and of their EMA copies), accumulated in float64
         (combine='logits': the members' weights stacked on a new axis 0 instead, a seed
         ensemble whose logits are averaged at inference, models.ensemble.LogitEnsemble)
      -> one ordinary run directory: checkpoint, config.json, run.json, metrics.jsonl
         (the trainer's evaluation of validation and every external split), soup.json

A soup is one model (an ensemble is applied like one), so effnet-eval, effnet-predict
(Grad-CAM too), effnet-export and effnet-results read its directory as they read any
run's. Two ways to make one:
``make_soup`` (``effnet-soup``) from finished runs, or ``train_soup`` (``effnet-train`` with
``config.soup_seeds > 1``), which trains the seeds into ``WORKDIR/members/seed_<S>/`` first.

The soup's checkpoint has effnet-train's format. Its step is the largest member step (the
evaluations and reports of the soup are filed under it); its optimizer state, RNG key and
data iterator state are the first member's, kept so that the layout is the trainer's: a
soup is for inference, not for training further.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import traverse_util

from effnet_jax.data import pipeline
from effnet_jax.output_files import write_text
from effnet_jax.runs import checkpoints as checkpoint_lib
from effnet_jax.runs import code_version
from effnet_jax.runs import layout as layout_lib
from effnet_jax.runs import lock as workdir_lock
from effnet_jax.runs import model as run_model
from effnet_jax.runs import record as run_record
from effnet_jax.runs.layout import Layout
from effnet_jax.runs.metrics_log import read_metrics, training_data
from effnet_jax.runs.run import never_prepare, read_soup
from effnet_jax.runs.writer import MetricWriter
from effnet_jax.train import feed as feed_lib
from effnet_jax.train import state as state_lib
from effnet_jax.train import steps
from effnet_jax.train.config import (
    check_select_split,
    get_config,
    require_batches_fit_devices,
    soup_seeds,
    validate_config,
)
from effnet_jax.train.loop import (
    describe_machine,
    evaluate_splits,
    planned_steps,
    resolve_data,
    train_and_evaluate,
    train_members,
)
from effnet_jax.train.parallel import Parallel

log = logging.getLogger("effnet_jax.train")

# The parts of a train state that are weights: averaged. The EMA copies are what inference
# uses when a run kept them (runs.model.inference_variables); each is the mean of the members' own.
AVERAGED = ("params", "batch_stats", "ema_params", "ema_batch_stats")


class IncompatibleMembersError(ValueError):
    """Two soup members are not the same model on the same inputs: their weights cannot be averaged."""


class SoupWorkdirError(RuntimeError):
    """The soup's workdir holds another run, or a soup of other members."""


COMBINES = ("weights", "logits")


def soup_combine(config: ml_collections.ConfigDict) -> str:
    """``config.soup_combine`` checked: 'weights' (average the weights) or 'logits' (a seed ensemble)."""
    value = config.get("soup_combine", "weights")
    if value not in COMBINES:
        raise ValueError(
            f"config.soup_combine={value!r}: expected 'weights' (a model soup: the members' weights averaged) or "
            "'logits' (a seed ensemble: every member kept, their logits averaged)"
        )
    return value


def member_workdir(workdir: str, seed: int) -> str:
    """Where ``train_soup`` trains the member of seed ``seed``."""
    return Layout(workdir).member(seed)


# --------------------------------------------------------------------------------------------------
# Training the seeds, then their soup (effnet-train with config.soup_seeds > 1).
# --------------------------------------------------------------------------------------------------
def train_soup(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
    """Trains ``config.soup_seeds`` runs (seeds ``config.seed``, +1, ...) and soups them into ``workdir``.

    Each member is an ordinary run in ``WORKDIR/members/seed_<S>/``: a rerun skips the ones
    that reached their last step (or stopped early) and resumes the others. The members
    train as one program (``loop.train_members``) when ``config.soup_vmap`` and the
    data path allow it (``_together``), else one after another. Returns the
    soup's record (``soup.json``), or None when a member stopped before its end
    (``config.stop_after_steps``): rerun to finish the members and make the soup.
    """
    validate_config(config)
    n = soup_seeds(config)
    combine = soup_combine(config)
    vmap = config.get("soup_vmap", "auto")  # checked by validate_config
    if jax.process_count() > 1:
        raise ValueError(
            f"config.soup_seeds={n}: a soup of seeds is trained in one process; train each seed as its own "
            "multi-process run, then average them with effnet-soup"
        )
    workdir = layout_lib.absolute(workdir)
    _refuse_planted_names(workdir)  # before the folder is created or locked
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    lock = workdir_lock.lock_workdir(workdir, True)
    try:
        _refuse_another_run(workdir)
        total = planned_steps(config)
        members, todo = [], []
        for i in range(n):
            seed = int(config.seed) + i
            member = member_workdir(workdir, seed)
            members.append(member)
            if run_finished(member, total):
                log.info("soup member %d of %d (seed %d) already finished in %s: not retrained", i + 1, n, seed, member)
                continue
            member_config = ml_collections.ConfigDict(config.to_dict())
            member_config.seed = seed
            member_config.soup_seeds = 1
            todo.append((i, member_config, member))
        if _together(config, vmap, todo):
            log.info(
                "soup members %s: seeds %s trained as one program in %s",
                ", ".join(str(i + 1) for i, _, _ in todo),
                ", ".join(str(c.seed) for _, c, _ in todo),
                ", ".join(m for _, _, m in todo),
            )
            train_members([c for _, c, _ in todo], [m for _, _, m in todo])
        else:
            for i, member_config, member in todo:
                log.info("soup member %d of %d: seed %d in %s", i + 1, n, member_config.seed, member)
                train_and_evaluate(member_config, member)
        unfinished = [m for m in members if not run_finished(m, total)]
        if unfinished:
            log.warning(
                "no soup yet: %s stopped before step %d (config.stop_after_steps); rerun to finish them",
                ", ".join(unfinished),
                total,
            )
            return None
        return _make_soup(members, workdir, "best", combine)
    finally:
        if lock is not None:
            lock.release()


def _together(config: ml_collections.ConfigDict, vmap: str, todo: list) -> bool:
    """Whether the members still to train (``todo``: (i, config, workdir)) train as one program.

    They do when there are two or more, ``config.soup_vmap`` allows it ('auto': not on a CPU), the training data is
    resident on the devices (each member then gathers its own order from it) and they all
    start at the same step; otherwise they train one after another, and a log line says why.
    """
    if len(todo) < 2 or vmap == "off":
        return False
    if vmap == "auto" and jax.default_backend() == "cpu":
        log.info(
            "config.soup_vmap='auto': on a CPU the soup members train one after another, each bitwise what "
            "soup_vmap='in_turn' trains and no slower (benchmarks/README.md, table seeds)"
        )
        return False
    why = None
    resolved = resolve_data(config)
    par = Parallel(resolved.parallelism, jax.devices()[: resolved.get("num_devices", 0) or None])
    num_examples = pipeline.split_info(resolved.data, "train")["num_examples"]
    frame = pipeline.training_frame(resolved.data, "train", state_lib.image_size(resolved))
    resident, reason = feed_lib.resident_choice(resolved, par, num_examples, frame)
    if not resident:
        why = f"the training data is streamed by grain ({reason}), which serves one order per run"
    else:
        begun = {m: _latest_step(m) for _, _, m in todo}
        if len(set(begun.values())) > 1:
            why = "they stopped at different steps (" + ", ".join(f"{m}: {s or 0}" for m, s in begun.items()) + ")"
    if why is None:
        return True
    (log.info if vmap == "auto" else log.warning)(
        "config.soup_vmap=%r: the soup members train one after another, not as one program: %s", vmap, why
    )
    return False


def _latest_step(workdir: str) -> int | None:
    """The latest checkpointed step of the run in ``workdir``; None when it has none."""
    if not epath.Path(checkpoint_lib.checkpoint_dir(workdir)).is_dir():
        return None
    ckpt = checkpoint_lib.Checkpointer(workdir, best_metric=None, async_save=False, read_only=True)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def run_finished(workdir: str, total_steps: int) -> bool:
    """True when the run in ``workdir`` has its last step saved, or stopped early (its last run record says so).

    A rerun of ``train_soup`` (and of ``effnet-sweep``) skips such a run rather than resuming it.
    """
    latest = _latest_step(workdir)
    if latest is None:
        return False
    if latest >= total_steps:
        return True
    runs = read_metrics(workdir, "run")  # a downloaded record may lack its step: not one of this run's
    return bool(runs) and runs[-1].get("step") == latest and bool(runs[-1].get("stopped_early"))


# --------------------------------------------------------------------------------------------------
# Averaging finished runs (effnet-soup).
# --------------------------------------------------------------------------------------------------
def make_soup(
    member_workdirs: list[str], workdir: str, checkpoint: str | int = "best", combine: str = "weights"
) -> dict:
    """Averages the members' checkpoints (each member's own ``checkpoint``) into a new run in ``workdir``.

    ``combine='logits'`` stacks them into a seed ensemble instead. Returns the soup's record
    (``soup.json``). A ``workdir`` that already holds this soup (same members at the same
    steps, combined the same way) is left as it is; one holding any other run is refused.
    """
    if combine not in COMBINES:
        raise ValueError(f"combine={combine!r}: expected one of {COMBINES}")
    workdir = layout_lib.absolute(workdir)
    members = [layout_lib.absolute(m) for m in member_workdirs]
    _check_members(members, workdir)
    _refuse_another_run(workdir)  # before creating or locking anything there
    try:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file or a dangling link there, a file on the way: one line, before any work
        raise SoupWorkdirError(f"--workdir={workdir}: cannot make it a folder ({e.strerror or e})") from None
    lock = workdir_lock.lock_workdir(workdir, True)
    try:
        return _make_soup(members, workdir, checkpoint, combine)
    finally:
        if lock is not None:
            lock.release()


def _make_soup(members: list[str], workdir: str, checkpoint: str | int, combine: str) -> dict:
    """The soup itself, in a workdir already locked."""
    started = time.time()
    _check_members(members, workdir)
    _refuse_another_run(workdir)

    # ----------------------------------------------------------------------------------------------
    # Members: step, config and run record first (no arrays), so a wrong member fails at once;
    # then the weights one member at a time, checked against the first, summed in float64.
    # ----------------------------------------------------------------------------------------------
    heads = []
    for member in members:
        try:
            heads.append(checkpoint_lib.read_checkpoint(member, checkpoint, with_state=False))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"soup member {member}: {e}") from None
        check_member_config(heads[-1])
        check_compatible(heads[0], heads[-1])
    if not heads[0].config.model.get("pretrained"):
        log.warning(
            "soup members start from random initialisations (model.pretrained=None), which differ by seed: their "
            "average is unlikely to be a useful model; soups average runs fine-tuned from the same weights"
        )
    entries = [_member_entry(head) for head in heads]
    step = max(e["step"] for e in entries)
    prior = _existing_soup(workdir, entries, combine)
    if prior is not None:
        log.info("%s already holds this soup (step %d): left as it is", workdir, prior["step"])
        return prior
    first, sums, stored, parts = None, {}, {}, {}
    for head, entry in zip(heads, entries):
        saved = checkpoint_lib.read_checkpoint(head.workdir, head.step)
        where = f"soup member {head.workdir}: {checkpoint_lib.checkpoint_dir(head.workdir)}/{head.step}"
        checkpoint_lib.check_state_variables(where, saved.state, saved.config)
        weights = averaged_weights(saved.state)
        if first is None:
            first = saved
            stored = {k: (np.shape(v), np.asarray(v).dtype) for k, v in weights.items()}
        else:
            check_same_weights(first, saved, stored, weights)
        for key, value in weights.items():
            if combine == "logits":
                parts.setdefault(key, []).append(np.asarray(value))
            else:
                sums[key] = sums.get(key, 0.0) + np.asarray(value, np.float64)
        log.info(
            "soup member %s: step %d, seed %s, %s %s",
            head.workdir,
            head.step,
            entry["seed"],
            head.config.get("select_split") or "validation",
            ", ".join(f"{k}={v:.4f}" for k, v in entry.items() if isinstance(v, float)),
        )
        del saved, weights
    if combine == "logits":  # every member kept, on a new leading axis (models.ensemble.LogitEnsemble)
        averaged = {k: jnp.asarray(np.stack(values)) for k, values in parts.items()}
    else:
        averaged = {k: jnp.asarray((total / len(members)).astype(stored[k][1])) for k, total in sums.items()}
    state = dict(first.state)
    state.update(traverse_util.unflatten_dict(averaged, sep="/"))
    state["step"] = jnp.asarray(step, np.asarray(first.state["step"]).dtype)
    config = ml_collections.ConfigDict(first.config.to_dict())
    config.soup = ml_collections.ConfigDict(
        {
            "members": [e["workdir"] for e in entries],
            "steps": [e["step"] for e in entries],
            "seeds": [e["seed"] for e in entries],
            "checkpoint": str(checkpoint),
            "combine": combine,
        }
    )

    # ----------------------------------------------------------------------------------------------
    # Evaluation: the trainer's, on validation and every external split; held until the checkpoint is saved.
    # ----------------------------------------------------------------------------------------------
    par = Parallel(config.get("parallelism", "jit"), jax.devices()[: config.get("num_devices", 0) or None])
    model = run_model.model_for_run(config, first.run, bn_axis_name=par.bn_axis_name)
    eval_step = par.compile_eval_step(functools.partial(steps.eval_step, model=model))
    variables = par.put_state(run_model.inference_variables(state, use_ema=config.get("ema_decay", 0) > 0))
    data_tag = training_data(first.workdir) or config.data.name
    held = _HeldRecords()
    evaluated = ml_collections.ConfigDict(config.to_dict())
    never_prepare(evaluated)  # the members' data folders are read as prepared, never written
    results = evaluate_splits(par, eval_step, variables, evaluated, first.run, step, held, data_tag)
    select_split = check_select_split(config)
    metric = config.get("best_metric") or "auc"

    # ----------------------------------------------------------------------------------------------
    # The run directory: config, run record, checkpoint, then metrics and soup.json (written last).
    # ----------------------------------------------------------------------------------------------
    write_text(Layout(workdir).config, config.to_json_best_effort(indent=2))
    run_record.write(workdir, first.run)
    # The first member's data iterator state: part of effnet-train's checkpoint format.
    data_state = checkpoint_lib.read_data_state(first.workdir, first.step)
    checkpoint_lib.write_checkpoint(workdir, step, state, data_state, config, results[select_split], run=first.run)
    seconds = time.time() - started
    writer = MetricWriter(workdir, extra={"data": data_tag})
    try:
        for record in held.records:
            writer.write(*record)
        # Wall time of the whole model, as effnet-results sums it: the members' training and the soup.
        member_runs = [r for m in members for r in read_metrics(m, "run")]
        member_seconds = sum(r.get("wall_seconds", 0.0) for r in member_runs)
        # The code of every member's training and of this soup, each named once.
        member_code = [r["code"] for r in member_runs if isinstance(r.get("code"), str)]
        code = ", ".join(dict.fromkeys([*member_code, code_version.describe()]))
        writer.write(
            step,
            "run",
            {
                "wall_seconds": member_seconds + seconds,
                "soup_seconds": seconds,
                "machine": describe_machine(par),
                "code": code,
            },
        )
    finally:
        writer.close()
    soup = {
        "combine": combine,
        "checkpoint": str(checkpoint),
        "step": step,
        "select_split": select_split,
        "metric": metric,
        "members": entries,
        "soup": {metric: results[select_split].get(metric)},
    }
    write_text(Layout(workdir).soup, json.dumps(soup, indent=2) + "\n")
    log.info(
        "%s of %d members at step %d: %s %s=%.4f (members %s); in %s",
        "seed ensemble (logits averaged)" if combine == "logits" else "soup (weights averaged)",
        len(members),
        step,
        select_split,
        metric,
        results[select_split].get(metric, float("nan")),
        ", ".join("n/a" if e.get(metric) is None else f"{e[metric]:.4f}" for e in entries),
        workdir,
    )
    return soup


# Facts two members must share, with how to read each from a saved checkpoint.
_FACTS = {
    "model.name": lambda s: s.config.model.name,
    "num_classes (config.loss)": lambda s: run_model.num_classes(s.config),
    "image_size (run.json)": lambda s: int(s.run.image_size),
    "mean (run.json)": lambda s: [float(v) for v in s.run.mean],
    "std (run.json)": lambda s: [float(v) for v in s.run.std],
    "data.name": lambda s: (s.config.get("data") or {}).get("name"),
}


def averaged_weights(state: dict) -> dict:
    """The parts of a saved state that a soup averages (``AVERAGED``), as '/'-joined path -> array."""
    return traverse_util.flatten_dict({k: state[k] for k in AVERAGED if state.get(k)}, sep="/")


def check_member_config(saved) -> None:
    """Refuses a member's saved config that the soup cannot evaluate or save with (a ValueError naming it and the key).

    The soup evaluates with the first member's config as the trainer would and records each
    member's seed: a downloaded member's config may hold any value there (``eval_batch_size=10**9``
    padded every batch to a billion images; a text seed made a soup.json no reader accepts).
    ``num_devices`` beyond this machine's is what the soup uses anyway: all its devices.
    """
    where = f"soup member {saved.workdir}: {checkpoint_lib.checkpoint_dir(saved.workdir)}/{saved.step}/config"
    data = saved.config.get("data")
    if data is None or not isinstance(data.get("name"), str):
        raise ValueError(f"{where}: data.name is missing: the soup is evaluated on the data set its members trained on")
    try:
        # Keys added since a member was trained take their defaults: its config is checked, not its age.
        config = ml_collections.ConfigDict(_with_defaults(saved.config.to_dict(), get_config().to_dict()))
        wanted = config.get("num_devices")
        if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > jax.device_count():
            config.num_devices = 0
        validate_config(config)
        require_batches_fit_devices(config, jax.device_count(), jax.process_count(), training=False)
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        text = str(e).strip("'\"").splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{where}: {text}") from None


def _with_defaults(values: dict, defaults: dict) -> dict:
    """``values`` with the keys it lacks taken from ``defaults``, section by section (its own values as they are)."""
    merged = dict(values)
    for key, default in defaults.items():
        if key not in merged:
            merged[key] = default
        elif isinstance(merged[key], dict) and isinstance(default, dict):
            merged[key] = _with_defaults(merged[key], default)
    return merged


def check_compatible(first, other) -> None:
    """Refuses a member whose model, classes, input or data set differ from the first's (``IncompatibleMembersError``).

    ``first`` and ``other`` are ``checkpointing.SavedCheckpoint``s; their states are not needed.
    """
    for key, read in _FACTS.items():
        if read(first) != read(other):
            _refuse(first, other, key, repr(read(first)), repr(read(other)))


def check_same_weights(first, other, first_shapes: dict, other_weights: dict) -> None:
    """Refuses a member whose weights differ from the first's in structure, shape or dtype, naming the first such key.

    ``first_shapes``: path -> (shape, dtype) of ``first``'s ``averaged_weights``; ``other_weights``: ``other``'s.
    """
    for key in sorted(set(first_shapes) | set(other_weights)):
        if key not in other_weights or key not in first_shapes:
            presence = {True: "present", False: "absent"}
            _refuse(first, other, key, presence[key in first_shapes], presence[key in other_weights])
        value = other_weights[key]
        theirs = (np.shape(value), np.asarray(value).dtype)
        if theirs != first_shapes[key]:
            _refuse(first, other, key, _shape_text(first_shapes[key]), _shape_text(theirs))


def _refuse(first, other, key: str, mine: str, theirs: str):
    raise IncompatibleMembersError(
        f"soup member {other.workdir} differs from {first.workdir} in {key}: {theirs} there, {mine} in the "
        "first member; a soup averages runs of one model on one data set (other seeds)"
    )


def _shape_text(shape_dtype) -> str:
    shape, dtype = shape_dtype
    return f"shape {tuple(shape)} {dtype}"


def _member_entry(saved) -> dict:
    """What soup.json records of a member: where, which step and seed, and its select-split metric there."""
    split = saved.config.get("select_split") or "validation"
    metric = saved.config.get("best_metric") or "auc"
    value = next((r.get(metric) for r in read_metrics(saved.workdir, split) if r.get("step") == saved.step), None)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        value = None  # a downloaded member's log may hold anything there: soup.json and its line print numbers
    return {"workdir": saved.workdir, "step": int(saved.step), "seed": saved.config.get("seed"), metric: value}


def _check_members(members: list[str], workdir: str) -> None:
    """Two or more distinct members, none of which holds the soup's workdir (a soup never writes into a member)."""
    if len(members) < 2:
        raise ValueError(f"a soup needs at least two members; got {members}")
    # The same folder through a link, a '..' or a trailing slash is the same member.
    resolved = [m if "://" in m else os.path.realpath(m) for m in members]
    for i, target in enumerate(resolved):
        if target in resolved[:i]:
            first = members[resolved.index(target)]
            same = "" if first == members[i] else f" (as {members[i]}, which resolves to {target})"
            raise ValueError(f"soup member {first} is given more than once{same}: a soup needs distinct runs")
    # Resolved too: a workdir given through a link into a member would write the soup inside it.
    real = workdir if "://" in workdir else os.path.realpath(workdir)
    for member, target in zip(members, resolved):
        if "://" in workdir or "://" in member:
            continue  # a local folder and cloud storage never hold one another
        if os.path.commonpath([workdir, member]) == member or os.path.commonpath([real, target]) == target:
            via = "" if real == workdir else f" (it resolves to {real})"
            raise SoupWorkdirError(
                f"the soup's workdir {workdir} is inside member {member}{via}; choose a folder outside it"
            )


def _refuse_another_run(workdir: str) -> None:
    """A soup's workdir is new, or holds a soup (soup.json): never another run's checkpoints or metrics."""
    _refuse_planted_names(workdir)
    layout = Layout(workdir)
    if epath.Path(layout.soup).exists():
        return
    for name, path in ((layout_lib.CHECKPOINTS, layout.checkpoints), (layout_lib.METRICS, layout.metrics)):
        if epath.Path(path).exists():
            raise SoupWorkdirError(
                f"workdir {workdir} already holds a run ({name}) and no {layout_lib.SOUP}: a soup is written into a new "
                "workdir; choose another --workdir (or remove that run, or the remains of an interrupted soup)"
            )


def _refuse_planted_names(workdir: str) -> None:
    """A link, FIFO or shared file at a name the soup writes is refused (SoupWorkdirError) before any work.

    Each write refuses it too (``output_files``), but only after the evaluation and, for the
    records, after the checkpoint: one line now leaves nothing half written.
    """
    problem = layout_lib.planted_output_problem(workdir)
    if problem:
        raise SoupWorkdirError(problem)


def _existing_soup(workdir: str, entries: list[dict], combine: str) -> dict | None:
    """The soup already in ``workdir`` when it has these members at these steps, combined so; refuses another."""
    path = epath.Path(Layout(workdir).soup)
    if not path.exists():
        return None
    # Checked as any run's soup.json (size, nesting, member records): the folder may be a downloaded soup.
    prior = read_soup(str(path))
    had = [(m["workdir"], m["step"]) for m in prior.get("members", [])]
    want = [(e["workdir"], e["step"]) for e in entries]
    if had != want:
        raise SoupWorkdirError(
            f"workdir {workdir} holds a soup of other members or steps ({path}: {had}; now {want}); "
            "choose another --workdir or remove that soup"
        )
    if prior.get("combine", "weights") != combine:
        raise SoupWorkdirError(
            f"workdir {workdir} holds these members combined by {prior.get('combine', 'weights')} ({path}); now "
            f"{combine}: choose another --workdir or remove that soup"
        )
    return prior


class _HeldRecords:
    """Takes ``MetricWriter.write`` calls and keeps them, to be written once the checkpoint is saved."""

    def __init__(self):
        self.records = []

    def write(self, step: int, split: str, metrics: dict):
        self.records.append((step, split, metrics))
