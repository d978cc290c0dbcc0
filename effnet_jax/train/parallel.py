"""Running the steps on all devices: jit over a 1-D ``data`` mesh (default) or pmap.

Both shard the batch across devices and keep one copy of the state per device;
BatchNorm statistics are global-batch in both (jit: XLA reduces over the sharded
batch; pmap: the model's ``bn_axis_name`` makes flax pmean them).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
PMAP_AXIS = "batch"


class Parallel:
    """Compiles steps and moves states/batches for one parallelism mode ('jit' or 'pmap')."""

    def __init__(self, mode: str = "jit", devices=None):
        if mode not in ("jit", "pmap"):
            raise ValueError(f"config.parallelism={mode!r}: expected 'jit' or 'pmap'")
        if mode == "pmap" and jax.process_count() > 1:
            # Its per-process state copies cannot be checkpointed collectively (a save hangs).
            raise ValueError(
                "config.parallelism='pmap' runs in one process only; multi-process runs "
                "(jax.distributed) need config.parallelism='jit'"
            )
        self.mode = mode
        self.devices = list(devices or jax.devices())
        self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
        self.mesh = Mesh(np.array(self.devices), (DATA_AXIS,))
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P(DATA_AXIS))
        # Batches of several members stacked on a leading axis: each member's batch split over the devices.
        self.stacked_batch_sharding = NamedSharding(self.mesh, P(None, DATA_AXIS))

    @property
    def bn_axis_name(self) -> str | None:
        """What the model's BatchNorm must pmean over (only pmap needs it)."""
        return PMAP_AXIS if self.mode == "pmap" else None

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def check_batch_size(self, global_batch: int, key: str) -> int:
        """The per-process batch size; errors unless the global one splits evenly over devices."""
        if global_batch % self.num_devices:
            raise ValueError(f"{key}={global_batch} is not divisible by the {self.num_devices} devices")
        return global_batch // jax.process_count()

    # -- state -------------------------------------------------------------------------------
    def state_sharding(self, abstract_state):
        """Shardings for a (host) state layout: replicated on the mesh, or on the first local
        device for pmap (which replicates it itself)."""
        target = self.replicated if self.mode == "jit" else jax.sharding.SingleDeviceSharding(self.local_devices[0])
        return jax.tree.map(lambda _: target, abstract_state)

    def abstract_state(self, state):
        """ShapeDtypeStructs of ``state`` carrying ``state_sharding``: what restoring and compiling take."""
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, self.state_sharding(state)
        )

    def put_state(self, state):
        """A host or restored state, ready for the compiled train step."""
        if self.mode == "jit":
            return jax.device_put(state, self.replicated)
        # One copy per local device, stacked on a leading axis that pmap maps over.
        n = len(self.local_devices)
        stacked = NamedSharding(Mesh(np.array(self.local_devices), (PMAP_AXIS,)), P(PMAP_AXIS))
        return jax.tree.map(
            lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), stacked), state
        )

    def get_state(self, state):
        """The state in the unreplicated layout that is checkpointed."""
        if self.mode == "jit":
            return state
        return jax.tree.map(lambda x: x[0], state)

    # -- batches -----------------------------------------------------------------------------
    def put_batch(self, batch: dict, stacked: bool = False):
        """A host-local numpy batch onto the devices (jit: one global array sharded on 'data').

        ``stacked``: the batch has a leading member axis (jit only); its example axis is the one split.
        """
        if self.mode == "jit":
            sharding = self.stacked_batch_sharding if stacked else self.batch_sharding
            return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
        n = len(self.local_devices)
        return {k: np.asarray(v).reshape((n, -1) + np.shape(v)[1:]) for k, v in batch.items()}

    def fetch(self, tree):
        """Per-example device outputs back to host numpy arrays, flattened over devices."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), tree)
        if jax.process_count() > 1:
            return multihost_utils.process_allgather(tree, tiled=True)
        return jax.tree.map(np.asarray, tree)

    # -- steps -------------------------------------------------------------------------------
    def compile_train_step(self, step_fn, abstract_state, resident: bool = False, stacked: bool = False):
        """``step_fn(state, batch, axis_name=...)`` compiled; the state argument is donated.

        resident=True: ``step_fn(state, batch, images)``, ``images`` a replicated array the
        step reads its batch from (jit only). stacked=True: batches with a leading member
        axis (``put_batch(..., stacked=True)``).
        """
        if self.mode == "pmap":
            if resident:
                raise ValueError("data.resident='on' needs config.parallelism='jit'")
            return jax.pmap(functools.partial(step_fn, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS, donate_argnums=(0,))
        state_sharding = self.state_sharding(abstract_state)
        return jax.jit(
            step_fn,
            in_shardings=(state_sharding, self.stacked_batch_sharding if stacked else self.batch_sharding)
            + ((self.replicated,) if resident else ()),
            out_shardings=(state_sharding, self.replicated),
            donate_argnums=(0,),
        )

    def compile_eval_step(self, eval_fn):
        """``eval_fn(variables, batch)`` compiled; outputs stay sharded like the batch."""
        if self.mode == "pmap":
            return jax.pmap(eval_fn, axis_name=PMAP_AXIS)
        return jax.jit(eval_fn, out_shardings=self.batch_sharding)

    def first_metrics(self, metrics):
        """Scalar train metrics on the host (pmap returns one identical copy per device)."""
        metrics = jax.device_get(metrics)
        if self.mode == "pmap":
            metrics = jax.tree.map(lambda x: x[0], metrics)
        return {k: float(v) for k, v in metrics.items()}
