"""How training batches reach the step: streamed by grain, or resident on the devices.

Both paths hand the step the same uint8 grey images (resized once on the host) in the
same order for the same seed; the step augments and normalises them on the device
(data/augment.py), so the two paths train bitwise the same run.

  grain:    decode + resize per step on host threads/workers, uint8 batch to the devices.
  resident: the training split decoded once, kept on every device as one uint8 array;
            each step sends only B example indices and labels, the step gathers its rows.

``data.resident`` chooses: 'on', 'off', or 'auto' = resident when the set fits (see
``resident_fits``), the run is one process and parallelism is 'jit'. Either path's
iterator state is grain's ``{'next_index': k}`` (grain in process; with data.num_workers
> 0 grain's state has another shape), so a checkpoint resumes under the other path too.
"""

from __future__ import annotations

import functools
import logging
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from effnet_jax.data import augment as augment_lib
from effnet_jax.data import pipeline, sampling
from effnet_jax.train import steps
from effnet_jax.train.config import CHOICES
from effnet_jax.train.parallel import Parallel

log = logging.getLogger("effnet_jax.train")

# The resident set may take this fraction of a device's free memory (bytes_limit minus
# bytes_in_use, as the device reports it before the model is placed): the rest is the
# model's, the optimizer's and the activations'.
RESIDENT_DEVICE_FRACTION = 0.25
# Devices that report no memory statistics (the CPU): a fixed cap, in bytes.
RESIDENT_CPU_CAP = 1 << 30


def resident_fits(nbytes: int, devices) -> tuple[bool, str]:
    """Whether a replicated set of ``nbytes`` per device fits the resident rule, and why."""
    free = []
    for d in devices:
        try:
            stats = d.memory_stats()
        except Exception:  # noqa: BLE001 - backends without memory statistics raise or return None
            stats = None
        if not stats or "bytes_limit" not in stats:
            free = None
            break
        free.append(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))
    if free is None:
        ok = nbytes <= RESIDENT_CPU_CAP
        return ok, f"{nbytes / 2**20:.1f} MiB {'<=' if ok else '>'} the fixed cap of {RESIDENT_CPU_CAP / 2**20:.0f} MiB"
    limit = RESIDENT_DEVICE_FRACTION * min(free)
    ok = nbytes <= limit
    return ok, (
        f"{nbytes / 2**20:.1f} MiB {'<=' if ok else '>'} {RESIDENT_DEVICE_FRACTION:g} of the "
        f"{min(free) / 2**20:.0f} MiB free on a device"
    )


def resident_choice(config, par: Parallel, num_examples: int, frame: int) -> tuple[bool, str]:
    """Apply ``data.resident`` ('auto' | 'on' | 'off') to ``num_examples`` frames of ``frame`` x ``frame`` bytes: (resident?, why)."""
    mode = config.data.get("resident", "auto")
    if mode not in CHOICES["data.resident"]:
        raise ValueError(f"config.data.resident={mode!r}: expected one of {', '.join(CHOICES['data.resident'])}")
    if mode == "off":
        return False, "data.resident='off'"
    blocker = None
    if par.mode != "jit":
        blocker = f"config.parallelism={par.mode!r} (needs 'jit')"
    elif jax.process_count() > 1:
        blocker = f"{jax.process_count()} processes (needs one)"
    if blocker:
        if mode == "on":
            raise ValueError(f"config.data.resident='on' cannot run with {blocker}; use data.resident='off'")
        return False, f"data.resident='auto': {blocker}"
    fits, why = resident_fits(num_examples * frame * frame, par.local_devices)
    return mode == "on" or fits, f"data.resident={mode!r}: {why}"


def members_program(config) -> str:
    """How members trained as one program share the step: 'vmap' (batched) or 'in_turn'.

    ``config.soup_vmap``: 'in_turn' is in turn; 'on' and 'auto' are vmap ('auto' trains
    members as one program only on an accelerator, whose cores one member's batch leaves idle:
    soup._together).
    """
    return "in_turn" if config.get("soup_vmap", "auto") == "in_turn" else "vmap"


def _in_turn(compiled, par: Parallel, pool: ThreadPoolExecutor):
    """``compiled(state, batch, images)`` (one member's step) over a list of member states and a stacked batch.

    Each member runs the very program a run of its own compiles (compiled once, for all of
    them), so its numbers are bitwise that run's; jax.lax.map over stacked members would
    compile the step as a loop body, which XLA fuses differently (1-ulp drift). The states
    stay a list, so no step copies one; the metrics come back stacked on a member axis.

    The members step at the same time, one host thread each (``pool``), each waiting for its
    own step, so that cores one member's step leaves idle can run the other's. Waiting in the
    thread is what makes them overlap: CPU steps dispatched without waiting ran one after
    the other.
    """
    stack = jax.jit(lambda *trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees), out_shardings=par.replicated)

    def one(state, batch, images):
        return jax.block_until_ready(compiled(state, par.put_batch(batch), images))

    def stepped(states, batch, images):
        futures = [
            pool.submit(one, state, {k: v[i] for k, v in batch.items()}, images) for i, state in enumerate(states)
        ]
        outs = [f.result() for f in futures]
        return [o[0] for o in outs], stack(*(o[1] for o in outs))

    return stepped


def use_resident(config, par: Parallel, num_examples: int, frame: int) -> bool:
    """``resident_choice``, with the choice and its reason logged."""
    resident, why = resident_choice(config, par, num_examples, frame)
    where = "resident on the devices" if resident else "streamed by grain"
    log.info("training data: %s (%s)", where, why)
    return resident


class Feed:
    """The training iterator(s) and the compiled step that consumes them, for one path.

    ``seeds``: one data order per seed. More than one (the members of a seed ensemble
    trained as one program, loop.train_members) needs the resident path: every member
    gathers its own batch from the one resident array, in its own order; ``members_program``
    says whether the step is vmapped over them or steps them in turn.
    """

    def __init__(self, config, par: Parallel, run, per_process_batch: int, num_examples: int, seeds=None):
        self.par = par
        self.members = members_program(config)
        self.augment = augment_lib.spec_from_config(config.data.augment, run.image_size)
        self.mean, self.std = tuple(run.mean), tuple(run.std)
        seeds = [int(config.seed)] if seeds is None else [int(s) for s in seeds]
        self.stacked = len(seeds) > 1
        # Larger than the model's size when zooming: the step crops each view from it.
        self.frame = pipeline.training_frame(config.data, "train", run.image_size)
        self.resident = use_resident(config, par, num_examples, self.frame)
        if self.stacked and not self.resident:
            raise ValueError(
                f"{len(seeds)} members in one program need the resident data path (each its own order); "
                "config.data.resident chose grain"
            )
        self.images = None
        self.pool = None  # the member threads of the in-turn program (compile)
        if self.resident:
            data = pipeline.decode_split(
                config.data, "train", image_size=run.image_size, shard_index=0, shard_count=1, frame=self.frame
            )
            self.images = jax.device_put(data["gray"], par.replicated)
            self.iterators = [
                sampling.IndexBatches(
                    sampling.TrainOrder(data["label"], config.data.balance, seed, 0), data["label"], per_process_batch
                )
                for seed in seeds
            ]
        else:
            ds = pipeline.create_split(
                config.data,
                "train",
                training=True,
                batch_size=per_process_batch,
                image_size=run.image_size,
                mean=run.mean,
                std=run.std,
                seed=seeds[0],
                frame=self.frame,
            )
            self.iterators = [iter(ds)]

    @property
    def iterator(self):
        """The one run's training iterator (a single member)."""
        (it,) = self.iterators
        return it

    def next_batch(self) -> dict:
        """The host batch of the next step; stacked on a leading member axis when there are several members."""
        if not self.stacked:
            return next(self.iterators[0])
        batches = [next(it) for it in self.iterators]
        return {k: np.stack([b[k] for b in batches]) for k in batches[0]}

    def compile(self, step_fn, abstract_state):
        """``step_fn`` (a partial of steps.train_step) compiled for this path, as f(state, host batch).

        Several members: the batch carries a leading member axis; the state does too, and
        the step is ``jax.vmap``ped over it, or the state is a list of the members' states,
        stepped in turn (``members_program``). The resident images are shared.
        """
        step_fn = functools.partial(step_fn, augment=self.augment, mean=self.mean, std=self.std)
        par = self.par
        if self.resident:
            step = functools.partial(steps.resident_train_step, step_fn=step_fn)
            if self.stacked and self.members == "in_turn":  # abstract_state: a list, one per member
                compiled = par.compile_train_step(step, abstract_state[0], resident=True)
                self.pool = ThreadPoolExecutor(len(abstract_state), thread_name_prefix="member_step")
                stepped = _in_turn(compiled, par, self.pool)
                return lambda states, batch: stepped(states, batch, self.images)
            if self.stacked:
                step = jax.vmap(step, in_axes=(0, 0, None))
            compiled = par.compile_train_step(step, abstract_state, resident=True, stacked=self.stacked)
            return lambda state, batch: compiled(state, par.put_batch(batch, stacked=self.stacked), self.images)
        compiled = par.compile_train_step(step_fn, abstract_state)
        return lambda state, batch: compiled(state, par.put_batch({"gray": batch["gray"], "label": batch["label"]}))

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()
        for it in self.iterators:
            if hasattr(it, "close"):
                it.close()
