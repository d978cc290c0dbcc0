"""Tiny training runs shared by the whole session: each is trained once, however many test files read it.

``base_run``: a stand-in run directory at step 3 (no training, ``helpers.stand_in_run``), and
``run_copy``: a copy of it for one test to tamper with; a test file may define its own
``base_run`` and ``run_copy`` copies that one.

``straight_run``: the synthetic debug config, 6 steps straight on one device (evaluated and
checkpointed at 3 and 6). ``resumed_run(mechanism)``: the same 6 steps, stopped part way by
``mechanism`` ('stop_after_steps' at step 3, or 'sigterm' during step 2) and resumed. The
training data is resident on the device in all of them (data.resident='auto' picks it),
except the sigterm run's first part, which grain streams. Tests
that write into a run's directory (eval reports, a calibration file) must leave its
checkpoints and metrics as they found them.
"""

from __future__ import annotations

import os
import shutil
import signal

import jax
import pytest
from helpers import machinery_config, session_compilation_cache, stand_in_run

from effnet_jax.data import pipeline
from effnet_jax.runs import checkpoints as checkpoint_lib
from effnet_jax.train import loop, preemption

RESUME_MECHANISMS = ("stop_after_steps", "sigterm")


def resume_config(**overrides):
    """The shared runs' config: 6 steps, evaluated and checkpointed every 3, on one device."""
    base = {
        "num_train_steps": 6,
        "eval_every_steps": 3,
        "checkpoint_every_steps": 3,
        "log_every_steps": 1,
        "keep_checkpoints": 2,
        # One device: eight fake ones share two cores and mostly wait on each other here;
        # the eight-device step is covered by test_train_steps.py.
        "num_devices": 1,
    }
    base.update(overrides)
    # The test network: these runs test training, resuming and evaluating, not Lite0's layers
    # (the parity tests cover those).
    return machinery_config(**base)


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory):
    """``{'workdir', 'state'}``: 6 steps straight (state: the final train state on the host)."""
    workdir = str(tmp_path_factory.mktemp("straight") / "run")
    with session_compilation_cache(tmp_path_factory):
        state = jax.device_get(loop.train_and_evaluate(resume_config(), workdir))
    return {"workdir": workdir, "state": state}


class TermAt:
    """Wraps the training iterator; sends this process SIGTERM when the batch of step `at` is taken."""

    def __init__(self, it, at):
        self.it, self.at, self.taken = it, at, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.taken += 1
        if self.taken == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return next(self.it)

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)

    def close(self):
        if hasattr(self.it, "close"):
            self.it.close()


def unhandled_sigterm(signum, frame):
    """Stands in for the default SIGTERM action (which would kill pytest); counts the signals it got."""
    del signum, frame
    unhandled_sigterm.calls = getattr(unhandled_sigterm, "calls", 0) + 1


def _stopped_by_stop_after_steps(workdir: str) -> dict:
    first = loop.train_and_evaluate(resume_config(stop_after_steps=3), workdir)
    shutil.copytree(workdir, workdir + "_at_step_3")
    return {"first": jax.device_get(first), "at_step_3": workdir + "_at_step_3"}


def _stopped_by_sigterm(workdir: str) -> dict:
    real = pipeline.create_split
    mp = pytest.MonkeyPatch()
    mp.setattr(
        pipeline,
        "create_split",
        lambda cfg, split, *, training, **kw: (
            TermAt(iter(real(cfg, split, training=training, **kw)), at=2)
            if training
            else real(cfg, split, training=training, **kw)
        ),
    )
    previous = signal.signal(signal.SIGTERM, unhandled_sigterm)
    try:
        with pytest.raises(preemption.Preempted) as stopped:
            # Streamed by grain until the signal, then resumed on the resident path (data.resident
            # 'auto' picks it for this tiny set): the paths must give the same run, and each must
            # resume from the other's checkpoint.
            loop.train_and_evaluate(resume_config(**{"data.resident": "off"}), workdir)
        handler_after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
        mp.undo()
    ckpt = checkpoint_lib.Checkpointer(workdir, read_only=True)
    saved = ckpt.all_steps()
    ckpt.close()
    return {"stopped": stopped.value, "saved": saved, "handler_after": handler_after}


@pytest.fixture(scope="session")
def resumed_run(tmp_path_factory):
    """``resumed_run(mechanism)``: ``{'workdir', 'state', ...}`` of a run stopped by ``mechanism`` and resumed.

    Each mechanism's run is trained on first use and kept for the session.
    """
    made = {}

    def get(mechanism: str) -> dict:
        if mechanism not in made:
            workdir = str(tmp_path_factory.mktemp(f"resumed_{mechanism}") / "run")
            stop = {"stop_after_steps": _stopped_by_stop_after_steps, "sigterm": _stopped_by_sigterm}[mechanism]
            with session_compilation_cache(tmp_path_factory):
                facts = stop(workdir)
                state = jax.device_get(loop.train_and_evaluate(resume_config(), workdir))
            made[mechanism] = {"workdir": workdir, "state": state, **facts}
        return made[mechanism]

    return get


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return stand_in_run(str(tmp_path_factory.mktemp("base") / "run"))


@pytest.fixture
def run_copy(base_run, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(base_run, workdir, symlinks=True)
    return workdir
