"""``train_and_evaluate``: the training loop, top to bottom in banner-marked sections."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time

import jax
import ml_collections
import numpy as np
from etils import epath

from effnet_jax import limits
from effnet_jax.data import augment as augment_lib
from effnet_jax.data import external, folders, pipeline, sources
from effnet_jax.data.data_dir import no_external_set_line
from effnet_jax.labels import CLASS_NAMES, class_weights
from effnet_jax.output_files import UnsafeOutputError, write_text
from effnet_jax.runs import checkpoints as checkpoint_lib
from effnet_jax.runs import code_version
from effnet_jax.runs import layout as layout_lib
from effnet_jax.runs import lock as workdir_lock
from effnet_jax.runs import model as run_model
from effnet_jax.runs import record as run_record
from effnet_jax.runs import writer as writer_lib
from effnet_jax.runs.layout import Layout
from effnet_jax.runs.metrics_log import read_metrics
from effnet_jax.runs.writer import MetricWriter
from effnet_jax.train import distributed, param_summary, preemption, steps
from effnet_jax.train import feed as feed_lib
from effnet_jax.train import freeze as freeze_lib
from effnet_jax.train import optimizer as optimizer_lib
from effnet_jax.train import progress as progress_lib
from effnet_jax.train import state as state_lib
from effnet_jax.train.config import check_select_split, flat_values, require_batches_fit_devices, validate_config
from effnet_jax.train.evaluate import evaluate
from effnet_jax.train.parallel import Parallel

# Our own logger: the CLI shows it at INFO while libraries (orbax) stay at WARNING.
log = logging.getLogger("effnet_jax.train")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run stopped without saving."""


class TrainingDataError(ValueError):
    """The training data cannot give a meaningful run (a class with no examples, a batch larger than the split)."""


def resolve_data(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose ``data.name='auto'`` became a concrete data set, with a folder task's classes.

    'auto' is the Kermany chest_xray builder when ``data.manual_dir`` is given, and
    ``config.data_fallback`` (PneumoniaMNIST, or synthetic for debug) otherwise.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    if config.data.name == "auto":
        config.data.name = "chest_xray" if config.data.manual_dir else config.data_fallback
        log.info("data.name='auto' -> %r (data.manual_dir=%r)", config.data.name, config.data.manual_dir)
    if config.data.name == folders.NAME:
        # A folder task's classes go into the run's config.json: evaluation, export and
        # serving read them there, even once the folder is gone.
        config.data.class_names = folders.class_names(config.data)
        validate_config(config)
    return config


MAX_STEPS = 2**31 - 1


def num_steps(config: ml_collections.ConfigDict, train_info: dict) -> tuple[int, int]:
    """(total steps, steps per epoch)."""
    steps_per_epoch = max(1, math.ceil(train_info["num_examples"] / config.batch_size))
    if config.num_train_steps > 0:
        total, key = int(config.num_train_steps), f"config.num_train_steps={config.num_train_steps!r}"
    else:
        total = max(1, int(math.ceil(config.num_epochs * steps_per_epoch)))
        key = f"config.num_epochs={config.num_epochs!r}"
    if total > MAX_STEPS:  # the state's step counter is an int32; 1e300 epochs would wrap it
        raise ValueError(f"{key}: {total:,} steps, more than the {MAX_STEPS:,} a run's step counter holds")
    if config.batch_size > train_info["num_examples"]:
        raise TrainingDataError(
            f"config.batch_size={config.batch_size} is larger than the training split ({train_info['num_examples']} "
            f"examples of {_data_source(config)}): every step would repeat images; lower config.batch_size"
        )
    return total, steps_per_epoch


def eval_every(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """Steps between evaluations: ``eval_every_epochs`` of the training split when set, else ``eval_every_steps``."""
    epochs = float(config.get("eval_every_epochs", 0.0) or 0.0)
    return max(1, round(epochs * steps_per_epoch)) if epochs > 0 else int(config.eval_every_steps)


def degenerate_prediction(metrics: dict) -> str | None:
    """The class a model predicted for every image of an evaluated split (at threshold 0.5), else None.

    With both classes present, recall 1 and specificity 0 mean every image was called
    PNEUMONIA; recall 0 and specificity 1, every image NORMAL.
    """
    recall, specificity = metrics.get("recall"), metrics.get("specificity")
    if recall == 1.0 and specificity == 0.0:
        return CLASS_NAMES[1]
    if recall == 0.0 and specificity == 1.0:
        return CLASS_NAMES[0]
    return None


def _data_source(config) -> str:
    where = f", data.manual_dir={config.data.manual_dir!r}" if config.data.get("manual_dir") else ""
    return f"data.name={config.data.name!r}{where}"


def _check_classes(config, split: str, info: dict):
    """A training split without one class trains a one-class model that scores perfectly: refuse it.

    A validation or test split without one gives undefined AUC and recall: warn.
    """
    empty = [name for name, n in zip(info["class_names"], info["class_counts"]) if n == 0]
    if not empty:
        return
    folder = (
        f" (the {'/'.join(empty)} folder(s) under {config.data.manual_dir}/train/)"
        if config.data.get("manual_dir") and config.data.get("split_protocol", "patient") == "patient"
        else ""
    )
    message = (
        f"the {split} split has no {' or '.join(empty)} examples{folder}: class counts "
        f"{dict(zip(info['class_names'], info['class_counts']))} from {_data_source(config)}"
    )
    if split == "train":
        raise TrainingDataError(message + "; every class needs training images")
    log.warning("%s; its AUC, recall and specificity are undefined", message)


def eval_splits(config) -> list[str]:
    """Splits evaluated at every evaluation: validation, then each external folder (``data.external``)."""
    return ["validation", *external.split_names(config.data)]


def evaluate_splits(
    par: Parallel, eval_step, variables, config, run, step: int, writer, data_tag: str, warned: set | None = None
) -> dict:
    """Evaluates ``variables`` on every split of ``eval_splits``; writes and logs each at ``step``; returns them by split.

    The records (with the external ``sensitivity_threshold``) are what 'best' checkpoints
    and the operating threshold are read from. A model that calls every image of a split
    one class is warned about once per ``warned`` (the run's set of warnings given).
    """
    results = {}
    for split in eval_splits(config):
        metrics = evaluate(par, eval_step, variables, config, run.image_size, run.mean, run.std, split)
        writer.write(step, split, metrics)
        log.info("step %d %s (%s): %s", step, split, data_tag, _short(metrics))
        results[split] = metrics
        _warn_if_degenerate(step, split, metrics, set() if warned is None else warned)
    return results


def _warn_if_degenerate(step: int, split: str, metrics: dict, warned: set) -> None:
    only = degenerate_prediction(metrics)
    if only is None or "degenerate" in warned:
        return
    warned.add("degenerate")
    log.warning(
        "step %d %s: the model calls every image %s (recall %.3f, specificity %.3f at threshold 0.5); "
        "with imbalanced classes and few steps a model learns the majority class: set "
        "config.class_weights='balanced' (or data.balance='oversample') and train longer (config.num_epochs)",
        step,
        split,
        only,
        metrics["recall"],
        metrics["specificity"],
    )


def planned_steps(config: ml_collections.ConfigDict) -> int:
    """The step a run of ``config`` ends at (its schedule's last), from the training split's size."""
    config = resolve_data(config)
    return num_steps(config, pipeline.split_info(config.data, "train"))[0]


class _EarlyStopping:
    """Counts evaluations without improvement of one metric."""

    def __init__(self, cfg):
        self.metric = cfg.metric
        self.sign = 1.0 if cfg.mode == "max" else -1.0
        if cfg.mode not in ("max", "min"):
            raise ValueError(f"config.early_stopping.mode={cfg.mode!r}: expected 'max' or 'min'")
        self.patience, self.min_delta = cfg.patience, cfg.min_delta
        self.best, self.bad = -math.inf, 0

    def update(self, metrics: dict) -> bool:
        """Records an evaluation; True when training should stop."""
        if not self.metric:
            return False
        if self.metric not in metrics:
            raise KeyError(
                f"config.early_stopping.metric={self.metric!r} is not a validation metric; have {sorted(metrics)}"
            )
        raw = metrics[self.metric]
        # Undefined values (NaN; None once read back from JSON) never count as improvements.
        value = -math.inf if raw is None or not math.isfinite(float(raw)) else self.sign * float(raw)
        if value > self.best + self.min_delta:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        return self.bad >= self.patience


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> state_lib.TrainState:
    """Trains per ``config`` in ``workdir``, resuming from its latest checkpoint; returns the final state.

    Holds ``WORKDIR/.lock`` throughout (a second trainer fails at once, naming this one);
    raises ``preemption.Preempted`` after saving when SIGTERM stopped the run.
    """
    if config.get("soup_seeds", 1) != 1:
        # effnet-train's soup of seeds is effnet_jax.train.soup.train_soup, which calls this once per seed.
        raise ValueError(
            f"config.soup_seeds={config.soup_seeds!r}: train_and_evaluate trains one run; "
            "effnet_jax.train.soup.train_soup (effnet-train) trains the seeds and averages them"
        )
    return train_members([config], [workdir])[0]


def train_members(configs: list, workdirs: list[str]) -> list[state_lib.TrainState]:
    """Trains runs that differ only in their seed as one program, each into its own workdir; returns their states.

    One config: an ordinary run (``train_and_evaluate``). Several (the members of a seed
    ensemble, train/soup.py): their train states are stacked on a leading member axis and
    the step is vmapped over it or steps them in turn (``feed.members_program``), on the
    resident data path, each member with its own initialisation, data order and augmentation
    draws. Every workdir gets exactly what a run of its own writes, and resumes like one; the
    members must start at the same step.
    """
    for config in configs:
        validate_config(config)
        require_batches_fit_devices(config, jax.device_count(), jax.process_count())  # before the data is prepared
    started = time.time()
    workdirs = [layout_lib.absolute(w) for w in workdirs]
    fresh, locks = [], []
    try:
        for workdir in workdirs:
            fresh.append(not epath.Path(workdir).exists())
            _refuse_planted_outputs(workdir)
            epath.Path(workdir).mkdir(parents=True, exist_ok=True)
            locks.append(workdir_lock.lock_workdir(workdir, jax.process_index() == 0))
        return _train_members(configs, workdirs, started)
    except BaseException:
        for workdir, new, lock in zip(workdirs, fresh, locks):
            if new and lock is not None:
                _remove_unstarted_workdir(workdir)
        raise
    finally:
        for lock in locks:
            if lock is not None:
                lock.release()


def _refuse_planted_outputs(workdir: str) -> None:
    """A link, FIFO or file planted at a name the run writes is refused before anything is created or trained."""
    problem = layout_lib.planted_output_problem(workdir)
    if problem:
        raise UnsafeOutputError(problem)


def _remove_unstarted_workdir(workdir: str) -> None:
    """Removes a workdir this call created when the run failed before writing anything but its lock."""
    path, lock = epath.Path(workdir), epath.Path(Layout(workdir).lock)
    if {p.name for p in path.iterdir()} <= {lock.name}:
        # Still holding the lock: a second trainer meanwhile failed at once, none waits on it.
        lock.unlink(missing_ok=True)
        path.rmdir()


def member_slice(tree, index: int | None):
    """Member ``index`` of the members' trees: stacked on a leading member axis (vmapped), or a
    list of them (stepped in turn); the tree itself when ``index`` is None."""
    if index is None:
        return tree
    if isinstance(tree, list):
        return tree[index]
    return jax.tree.map(lambda x: x[index], tree)


class _Run:
    """One run's own part of the loop: its workdir, config, checkpoints, metrics, early stopping and data order.

    ``index`` is its position on the member axis of a stacked state (None: the state is its own).
    """

    def __init__(self, config, workdir: str, index: int | None, select_split: str, data_tag: str):
        self.config, self.workdir, self.index = config, workdir, index
        self.select_split = select_split
        self.name = "" if index is None else f"member {workdir}: "
        self.ckpt = checkpoint_lib.Checkpointer(
            workdir,
            keep=config.keep_checkpoints,
            best_metric=config.best_metric or None,
            best_mode=config.best_mode,
            async_save=config.async_checkpointing,
        )
        self.data_tag = data_tag
        self.writer = None
        self.pending = []
        self.last_saved = None
        self.stopped_early = False
        self.final = None  # the state it stopped with, when it stopped before the others
        self.stop_step = None
        self.stopper = _EarlyStopping(config.early_stopping)

    def open_metrics(self, start: int):
        writer_lib.truncate_after(self.workdir, start)
        self.writer = MetricWriter(self.workdir, extra={"data": self.data_tag})
        for record in read_metrics(self.workdir, self.select_split):
            self.stopper.update(record)  # a resumed run keeps counting patience where it stopped
        # Process 0 truncated the file and may be alone in seeing it (local disks): its count decides
        # for all, or the processes would stop at different steps and hang.
        best, bad = distributed.broadcast_floats([self.stopper.best, self.stopper.bad])
        self.stopper.best, self.stopper.bad = best, int(bad)

    def close(self):
        self.ckpt.wait()
        self.ckpt.close()
        if self.writer is not None:
            self.writer.close()


def _train_members(configs: list, workdirs: list[str], started: float) -> list[state_lib.TrainState]:
    """The runs themselves, in workdirs already locked."""
    code = code_version.describe()  # read once per process (effnet-train reads it at its start)

    # ----------------------------------------------------------------------------------------------
    # Input: split sizes first, they fix the number of steps. Members differ only in their seed.
    # ----------------------------------------------------------------------------------------------
    configs = [resolve_data(c) for c in configs]
    config = configs[0]
    stacked = len(configs) > 1
    train_info = pipeline.split_info(config.data, "train")
    _check_classes(config, "train", train_info)
    augment_lib.check_class_count(augment_lib.spec_from_config(config.data.augment), train_info["class_names"])
    total_steps, steps_per_epoch = num_steps(config, train_info)
    every = eval_every(config, steps_per_epoch)
    warned = set()  # warnings this run gives once
    _check_classes(config, "validation", pipeline.split_info(config.data, "validation"))
    select_split = check_select_split(config)
    warn_without_external_set(config)
    if external.split_names(config.data):
        # Never train on external data: refuse folders that overlap the training images.
        train_selection = sources.selection(config.data, "train")
        external.check_disjoint(config.data, sources.reader(config.data, "train"), train_selection)
        for split in external.split_names(config.data):
            info = pipeline.split_info(config.data, split)
            log.info(
                "external split %s: %s, %d images %s",
                split,
                external.folder_of(config.data, split),
                info["num_examples"],
                dict(zip(info["class_names"], info["class_counts"])),
            )
    image_size = state_lib.image_size(config)
    # Every evaluation batch is padded to full size: refuse one the budget cannot hold now,
    # not at the first evaluation after minutes of training.
    limits.padded_batch_size(config.eval_batch_size // jax.process_count(), image_size, "config.eval_batch_size")
    data_tag = "synthetic" if train_info["synthetic"] else config.data.name
    log.info(
        "data: %s, train split %d examples %s, %d steps (%.2f epochs of %d steps)",
        data_tag,
        train_info["num_examples"],
        dict(zip(train_info["class_names"], train_info["class_counts"])),
        total_steps,
        total_steps / steps_per_epoch,
        steps_per_epoch,
    )

    # ----------------------------------------------------------------------------------------------
    # Mesh: every device; the batch is split over them, the state replicated.
    # ----------------------------------------------------------------------------------------------
    devices = jax.devices()
    if config.num_devices > 0:
        if config.num_devices > len(devices):
            raise ValueError(f"config.num_devices={config.num_devices} but only {len(devices)} devices exist")
        devices = devices[: config.num_devices]
    par = Parallel(config.parallelism, devices)
    per_process_batch = par.check_batch_size(config.batch_size, "config.batch_size")
    log.info("devices: %d x %s, parallelism=%s", par.num_devices, jax.devices()[0].platform, par.mode)

    # ----------------------------------------------------------------------------------------------
    # Model and optimizer, with freezing; one initial state per member (its seed's head and RNG key).
    # ----------------------------------------------------------------------------------------------
    # A checkpoint this config cannot resume is refused before the model is built and compiled.
    for member_config, workdir in zip(configs, workdirs):
        checkpoint_lib.check_workdir_resumable(workdir, member_config)
    # The loaded weights decide the input normalisation (a Keras .h5 file carries its own).
    states = []
    for member_config in configs:
        loaded, variables = state_lib.model_from_config(member_config)
        if member_config.model.zero_head:
            variables = state_lib.zero_head(variables)
        states.append(variables)
    run = run_record.RunRecord(
        image_size=image_size,
        mean=tuple(loaded.variant.mean),
        std=tuple(loaded.variant.std),
        train_class_counts=tuple(int(n) for n in train_info["class_counts"]),
    )
    del loaded
    variables = states[0]
    frozen = freeze_lib.frozen_mask(variables["params"], freeze_lib.freeze_patterns(config, variables["params"]))
    n_frozen, n_total = freeze_lib.count(frozen)
    frozen_norms = freeze_lib.frozen_norms(frozen)
    model = run_model.model_for_run(config, run, frozen_norms, par.bn_axis_name)
    log.info(
        "model: %s at %d px, %d of %d parameter tensors frozen (%d BatchNorms keep running stats)\n%s",
        config.model.name,
        run.image_size,
        n_frozen,
        n_total,
        len(frozen_norms),
        param_summary.describe(param_summary.count_parameters(variables["params"], frozen)),
    )
    tx, schedule = optimizer_lib.create_optimizer(config, frozen, total_steps, steps_per_epoch)
    weights = class_weights(config.class_weights, train_info["class_counts"])
    if weights is not None:
        log.info("class weights: %s", weights.tolist())
        if config.data.balance != "none":
            log.warning("class weights with data.balance=%r correct the imbalance twice", config.data.balance)
    states = [state_lib.create_train_state(v, tx, c) for v, c in zip(states, configs)]
    del variables

    # ----------------------------------------------------------------------------------------------
    # Checkpoints: each run resumes from its workdir when it has one.
    # ----------------------------------------------------------------------------------------------
    runs = [
        _Run(c, w, i if stacked else None, select_split, data_tag) for i, (c, w) in enumerate(zip(configs, workdirs))
    ]
    # Streamed by grain or resident on the devices (data.resident); the same batches either way.
    feed = feed_lib.Feed(
        config, par, run, per_process_batch, train_info["num_examples"], seeds=[c.seed for c in configs]
    )
    abstract = par.abstract_state(states[0])
    begun = [r.ckpt.latest_step() for r in runs]
    if len(set(begun)) > 1:
        raise ValueError(
            "members trained as one program start at one step; their workdirs hold "
            + ", ".join(f"{r.workdir}: {s or 0}" for r, s in zip(runs, begun))
        )
    start = begun[0]
    for i, r in enumerate(runs):
        if start is not None:
            states[i], data_state, saved_config = checkpoint_lib.restore_to_resume(r.ckpt, start, abstract, r.config)
            feed.iterators[i].set_state(data_state)
            _log_config_changes(saved_config, r.config)
            log.info("resumed from %s/%d", r.ckpt.directory, start)
            r.last_saved = start
        elif jax.process_index() == 0:
            layout = Layout(r.workdir)
            write_text(layout.config, r.config.to_json_best_effort(indent=2))  # not through a planted link
            run_record.write(r.workdir, run)
            log.info(
                "config: %s; derived (image size, normalisation, class counts): %s", layout.config, layout.run_record
            )
    start = start or 0
    if stacked:
        vmapped = feed.members == "vmap"
        # Stepped in turn, each member's state stays its own (a list), so no step copies a state.
        state = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *states) if vmapped else list(states)
        log.info(
            "%d members trained as one program (config.soup_vmap=%r): %s",
            len(runs),
            config.soup_vmap,
            "states stacked on a member axis, the step vmapped over it"
            if vmapped
            else "one compiled step, the members stepped side by side on host threads (each bitwise the run it is alone)",
        )
    else:
        state = states[0]
    del states
    step_abstract = par.abstract_state(state)
    state = par.put_state(state)

    # ----------------------------------------------------------------------------------------------
    # Update and eval steps, compiled for the devices.
    # ----------------------------------------------------------------------------------------------
    train_step = feed.compile(
        steps.bound_train_step(config, model=model, tx=tx, frozen=frozen, class_weights=weights),
        step_abstract,
    )
    eval_step = par.compile_eval_step(functools.partial(steps.eval_step, model=model))

    # ----------------------------------------------------------------------------------------------
    # Loop.
    # ----------------------------------------------------------------------------------------------
    for r in runs:
        r.open_metrics(start)
    stop_at = total_steps if config.stop_after_steps < 0 else min(total_steps, config.stop_after_steps)
    bar = _progress(config, start, total_steps, data_tag)
    # img/s counts training steps only: compiling, evaluating and saving are left out.
    throughput = progress_lib.Throughput(config.batch_size)
    step = start

    def save(r: _Run, metrics=None):
        data_state = feed.iterators[runs.index(r)].get_state()
        # Orbax writes JSON items from process 0 only; every process resumes from that state.
        distributed.check_same_everywhere(
            json.dumps(checkpoint_lib.encode_data_state(data_state), sort_keys=True),
            f"the training data iterator state at step {step}",
        )
        r.ckpt.save(step, member_slice(par.get_state(state), r.index), data_state, r.config, metrics, run=run)
        r.last_saved = step

    def flush_train_metrics():
        # Fetching the metrics syncs with the devices; doing it only here keeps them busy.
        pending = runs[0].pending
        if not pending:
            return
        speed = throughput.reading(pending)
        fetched = [par.first_metrics(m) if not stacked else jax.device_get(m) for m in pending]
        for r in active:
            values = [v if r.index is None else {k: float(x[r.index]) for k, x in v.items()} for v in fetched]
            for i, v in enumerate(values):
                if not math.isfinite(v["loss"]):
                    bad = step - len(values) + i + 1
                    where = (
                        f"the last good checkpoint is step {r.last_saved} in {r.ckpt.directory}"
                        if r.last_saved
                        else "no checkpoint was saved"
                    )
                    raise NonFiniteLossError(
                        f"{r.name}training loss is {v['loss']} at step {bad}; stopped without saving ({where}). "
                        f"Try a lower config.optimizer.learning_rate or config.optimizer.grad_clip_norm."
                    )
            mean = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
            if speed is not None:
                mean["images_per_sec"] = speed[0]
            mean["learning_rate"] = optimizer_lib.learning_rate(schedule, step - 1, config.optimizer.grad_accum_steps)
            mean["epoch"] = step / steps_per_epoch
            r.writer.write(step, "train", mean)
            if bar is not None and r is active[0]:
                bar.report(mean["loss"], speed)
        runs[0].pending = []

    preempted = False
    active = list(runs)  # members still training (one stopped early leaves, the others go on)
    stop_signal = preemption.StopSignal()
    if step < stop_at:
        log.info(
            "compiling the train step (once per run; a minute or two on a CPU, seconds from the compilation cache)"
        )
    first_step = True
    try:
        while step < stop_at:
            batch = feed.next_batch()
            state, metrics = train_step(state, batch)
            step += 1
            runs[0].pending.append(metrics)
            if first_step:
                # The first step compiled: wait for it, so its time stays out of img/s.
                jax.block_until_ready(metrics)
                throughput.restart()
                first_step = False
            else:
                throughput.step()
            if bar is not None:
                bar.advance()
            is_last = step == total_steps
            if step % config.log_every_steps == 0 or is_last or step == stop_at:
                flush_train_metrics()
            eval_now = is_last or (every > 0 and step % every == 0)
            if eval_now:
                flush_train_metrics()  # never evaluate or save a state whose loss was not checked
            saved_any = False
            for r in list(active):
                eval_metrics = None
                if eval_now:
                    variables = run_model.inference_variables(
                        member_slice(state, r.index), use_ema=config.ema_decay > 0
                    )
                    results = evaluate_splits(par, eval_step, variables, config, run, step, r.writer, data_tag, warned)
                    eval_metrics = results[select_split]
                    r.stopped_early = r.stopper.update(eval_metrics)
                if eval_now or step % config.checkpoint_every_steps == 0 or step == stop_at or r.stopped_early:
                    flush_train_metrics()
                    save(r, eval_metrics)
                    saved_any = True
                if r.stopped_early:
                    log.info(
                        "%searly stopping at step %d: %s did not improve for %d evaluations",
                        r.name,
                        step,
                        config.early_stopping.metric,
                        config.early_stopping.patience,
                    )
                    # A host copy: the member's device state is still stepped (and donated) with the others.
                    r.final = jax.device_get(member_slice(par.get_state(state), r.index)) if stacked else None
                    r.stop_step = step
                    active.remove(r)
            if saved_any:
                throughput.restart()
            if not active:
                break
            # After the step's own save (if any): every process asks at every step, so all agree.
            if step < stop_at and stop_signal.should_stop(step, sync=step % config.log_every_steps == 0):
                flush_train_metrics()
                for r in active:
                    if r.last_saved != step:
                        save(r)
                preempted = True
                break
        # Wall time of this invocation, data preparation and compilation included (a resumed
        # run writes one record per invocation): the wall time a result record reports. Members
        # trained as one program share it evenly, so the soup's sum is the program's time.
        seconds = (time.time() - started) / len(runs)
        for r in runs:
            r.writer.write(
                r.stop_step or step,
                "run",
                {
                    "wall_seconds": seconds,
                    "resumed_from_step": start,
                    "stopped_early": r.stopped_early,
                    "machine": describe_machine(par),
                    "code": code,
                    **({"members_in_one_program": len(runs)} if stacked else {}),
                    **({"preempted": True} if preempted and r in active else {}),
                },
            )
    finally:
        stop_signal.close()
        if bar is not None:
            bar.close()
        for r in runs:
            r.close()
        feed.close()
    if preempted:
        where = ", ".join(f"{r.ckpt.directory}/{step}" for r in active)
        raise preemption.Preempted(
            f"stopped by SIGTERM after step {step}, saved in {where}; run the same command to resume"
        )
    for r in runs:
        done = r.stop_step or step
        log.info("%sdone at step %d; checkpoints in %s, metrics in %s", r.name, done, r.ckpt.directory, r.writer.path)
    warn_without_external_set(config)
    final = par.get_state(state)
    return [r.final if r.final is not None else member_slice(final, r.index) for r in runs]


def warn_without_external_set(config) -> None:
    """Logs the one NO EXTERNAL SET line (start and end of a run) when ``config.data.external`` is empty."""
    line = no_external_set_line(config.data)
    if line:
        log.warning(line)


def describe_machine(par: Parallel) -> str:
    """Where the run ran, for results tables: e.g. '1 process(es), 1 x cpu (2 host cores, Intel(R) Xeon(R) Processor)'."""
    cpu = host_cpu_model()
    return (
        f"{jax.process_count()} process(es), {par.num_devices} x {jax.devices()[0].device_kind} "
        f"({os.cpu_count()} host cores{', ' + cpu if cpu else ''})"
    )


def host_cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The host CPU's model name (Linux), None where it cannot be read: same code, other CPU, other numbers."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 16)
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return " ".join(value.split())[:100]
    return None


def _short(metrics: dict) -> str:
    keys = ("loss", "accuracy", "auc", "precision", "recall", "sensitivity", "specificity", "f1")
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)


def _log_config_changes(saved: ml_collections.ConfigDict, current: ml_collections.ConfigDict):
    """Warns about keys whose value differs from the checkpointed run's (resuming is allowed)."""
    a, b = flat_values(saved), flat_values(current)
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if changed:
        log.warning("resuming with a config that differs from the checkpoint's in: %s", ", ".join(changed))


def _progress(config, start: int, total: int, data_tag: str) -> progress_lib.TrainProgress | None:
    if not config.progress_bar or jax.process_index() != 0:
        return None
    return progress_lib.TrainProgress(total, start, f"train [{data_tag}]")
