"""Checkpoints: a process killed mid-save leaves the last good checkpoint; eval without one is a clear error."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import tiny_config

from effnet_jax import runs
from effnet_jax.runs import checkpoints as checkpoint_lib

# The child saves step 1 and waits for it, then starts an async save of step 2 large
# enough to still be writing, and SIGKILLs itself once orbax's temporary directory exists.
_CHILD = textwrap.dedent("""
    import os, signal, sys, time
    import numpy as np
    from effnet_jax.runs import checkpoints as checkpoint_lib
    from helpers import tiny_config
    workdir, config = sys.argv[1], tiny_config()
    ckpt = checkpoint_lib.Checkpointer(workdir, keep=3, best_metric=None)
    small = {"w": np.arange(1000, dtype=np.float32)}
    ckpt.save(1, small, {"next_index": 1}, config)
    ckpt.wait()
    big = {"w": np.random.RandomState(0).randn(48 * 2**20 // 4).astype(np.float32)}
    ckpt.save(2, big, {"next_index": 2}, config)
    tmp = [d for d in os.listdir(ckpt.directory) if d.startswith("2") and "tmp" in d]
    print("tmp:" + ",".join(tmp), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_process_killed_mid_save_leaves_the_last_good_checkpoint_restorable(tmp_path):
    workdir = str(tmp_path / "run")
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, workdir],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": os.pathsep.join(
                [os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH", "")]
            ),
        },
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    tmp_dirs = proc.stdout.strip().split("tmp:")[-1]
    assert tmp_dirs, "the kill came before the save of step 2 started; the test proved nothing"
    ckpt = checkpoint_lib.Checkpointer(workdir, best_metric=None)
    try:
        assert ckpt.all_steps() == [1]
        import jax

        abstract = {
            "w": jax.ShapeDtypeStruct((1000,), np.float32, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
        }
        state, data_state, config = ckpt.restore(1, abstract)
        np.testing.assert_array_equal(state["w"], np.arange(1000, dtype=np.float32))
        assert data_state == {"next_index": 1}
        assert config.model.name == tiny_config().model.name
    finally:
        ckpt.close()


def test_opening_a_run_without_checkpoints_names_the_workdir(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no checkpoints in workdir '{tmp_path}'"):
        runs.open(str(tmp_path))
    os.makedirs(tmp_path / "checkpoints")
    with pytest.raises(FileNotFoundError, match=f"no checkpoints in workdir '{tmp_path}'"):
        runs.open(str(tmp_path))


def test_best_is_kept_beside_the_last_k_and_found_by_its_metric(tmp_path):
    config = tiny_config()
    ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=2, best_metric="auc", best_mode="max")
    for step, auc in [(1, 0.6), (2, 0.9), (3, None), (4, 0.7), (5, 0.8)]:
        ckpt.save(
            step,
            {"w": np.full(3, step, np.float32)},
            {"next_index": step},
            config,
            None if auc is None else {"auc": auc, "loss": 1.0 - auc},
        )
    ckpt.wait()
    assert ckpt.all_steps() == [2, 4, 5]
    assert ckpt.best_step() == 2
    assert checkpoint_lib.resolve_step(ckpt, "latest", str(tmp_path)) == 5
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 3 .* available: \[2, 4, 5\]"):
        checkpoint_lib.resolve_step(ckpt, 3, str(tmp_path))
    ckpt.close()


def test_a_state_saved_from_8_devices_restores_onto_1(tmp_path):
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    replicated = NamedSharding(mesh, PartitionSpec())
    state = {
        "params": {"w": jax.device_put(np.arange(12, dtype=np.float32).reshape(3, 4), replicated)},
        "step": jax.device_put(np.int32(7), replicated),
    }
    ckpt = checkpoint_lib.Checkpointer(str(tmp_path), best_metric=None)
    ckpt.save(7, state, {"next_index": 7}, tiny_config())
    ckpt.wait()
    restored = ckpt.restore_state_as_saved(7)
    ckpt.close()
    w = restored["params"]["w"]
    assert w.sharding.device_set == {jax.local_devices()[0]}
    np.testing.assert_array_equal(w, np.arange(12, dtype=np.float32).reshape(3, 4))
    assert int(restored["step"]) == 7
