"""Hostile runs: two trainers on one workdir, SIGTERM mid-run, an empty class, stale prepared data,
a changed model on resume, and the one-line errors (with exit statuses) the CLIs give for each."""

import errno
import json
import os
import subprocess
import sys
import textwrap
import time

import data_fixtures as fx
import numpy as np
import pytest
from run_fixtures import resume_config

from effnet_jax.cli import errors
from effnet_jax.data import prepare
from effnet_jax.runs import checkpoints as checkpoint_lib
from effnet_jax.runs.lock import WorkdirLock, WorkdirLockedError
from effnet_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}


def _config(**overrides):
    return resume_config(**overrides)


# --- one trainer per workdir -----------------------------------------------------------------------

_HOLDER = textwrap.dedent("""
    import sys, time
    from effnet_jax.runs.lock import WorkdirLock
    WorkdirLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(600)
""")


@pytest.fixture
def held_workdir(tmp_path):
    """A workdir whose lock another live process holds: (workdir, that process)."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(workdir)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert holder.stdout.readline().strip() == "held"
    yield workdir, holder
    holder.kill()
    holder.wait()


def test_a_second_trainer_fails_at_once_naming_the_holder(held_workdir):
    workdir, holder = held_workdir
    started = time.time()
    with pytest.raises(WorkdirLockedError, match=f"{workdir} is in use by another trainer \\(pid {holder.pid} on"):
        loop.train_and_evaluate(_config(), str(workdir))
    assert time.time() - started < 5  # before any data, model or compilation work
    assert not (workdir / "checkpoints").exists() and not (workdir / "metrics.jsonl").exists()


def test_effnet_train_on_a_held_workdir_is_one_line_with_exit_status_4(held_workdir):
    workdir, holder = held_workdir
    proc = subprocess.run(
        [sys.executable, "-m", "effnet_jax.cli.train", "--config=configs/debug.py", f"--workdir={workdir}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert proc.returncode == errors.EXIT_WORKDIR, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"effnet-train: workdir {workdir} is in use")
    assert f"pid {holder.pid}" in proc.stderr


def test_a_lock_left_by_a_killed_trainer_is_taken_over(held_workdir):
    workdir, holder = held_workdir
    holder.kill()
    holder.wait()
    assert f"pid {holder.pid}" in (workdir / ".lock").read_text()  # the dead holder's file is still there
    lock = WorkdirLock(str(workdir)).acquire()
    try:
        assert f"pid {os.getpid()}" in (workdir / ".lock").read_text()
    finally:
        lock.release()


def test_only_process_zero_takes_the_lock(tmp_path):
    from effnet_jax.runs.lock import lock_workdir

    assert lock_workdir(str(tmp_path), is_main_process=False) is None
    assert not (tmp_path / ".lock").exists()


# --- resume (SIGTERM and bitwise resume: test_resume.py) ------------------------------------------------------------------------------


def test_resuming_with_another_model_name_is_one_clear_error(tmp_path, monkeypatch):
    # The saved config alone decides, before any model is built: a checkpoint of a stand-in state is enough.
    workdir = tmp_path / "run"
    state = {"params": {"w": np.zeros(3, np.float32)}}
    checkpoint_lib.write_checkpoint(str(workdir), 3, state, {"position": 3}, _config())

    def never(*args, **kwargs):
        raise AssertionError("a model was built before the saved config was checked")

    monkeypatch.setattr(loop.state_lib, "model_from_config", never)
    with pytest.raises(
        checkpoint_lib.CheckpointMismatchError,
        match=r"saved with model.name='efficientnet_test' but the config asks for 'efficientnet_b0'",
    ):
        loop.train_and_evaluate(_config(**{"model.name": "efficientnet_b0"}), str(workdir))
    status, message = errors.one_line(checkpoint_lib.CheckpointMismatchError("x"))
    assert status == errors.EXIT_WORKDIR


# --- the training data ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def empty_normal(tmp_path_factory):
    """A chest_xray tree whose train/NORMAL/ is empty."""
    tree = {k: v for k, v in fx.GOOD_TREE.items() if not k.startswith("train/NORMAL/")}
    tree["train/NORMAL/"] = None
    return fx.write_tree(tmp_path_factory.mktemp("raw") / "chest_xray", tree)


def _xray_config(raw, data_dir, **overrides):
    return _config(
        **{
            "data.name": "chest_xray",
            "data.manual_dir": str(raw),
            "data.data_dir": str(data_dir),
            "data.max_size": 36,
            **overrides,
        }
    )


def test_a_training_split_with_an_empty_class_is_refused_naming_the_folder(empty_normal, tmp_path):
    with pytest.raises(
        loop.TrainingDataError,
        match=r"the train split has no NORMAL examples \(the NORMAL folder\(s\) "
        rf"under {empty_normal}/train/\)",
    ):
        loop.train_and_evaluate(_xray_config(empty_normal, tmp_path / "tfds"), str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_validation_split_with_an_empty_class_is_a_warning(caplog):
    info = {"class_names": ["NORMAL", "PNEUMONIA"], "class_counts": [0, 3]}
    with caplog.at_level("WARNING", logger="effnet_jax.train"):
        loop._check_classes(_config(), "validation", info)
    assert "the validation split has no NORMAL examples" in caplog.text and "undefined" in caplog.text


def test_a_batch_larger_than_the_training_split_is_refused(tmp_path):
    raw = fx.write_tree(tmp_path / "chest_xray", fx.GOOD_TREE)  # 11 training images, some carved to validation
    with pytest.raises(
        loop.TrainingDataError,
        match=r"config.batch_size=16 is larger than the training split \(\d+ "
        r"examples of data.name='chest_xray'",
    ):
        loop.train_and_evaluate(_xray_config(raw, tmp_path / "tfds", batch_size=16), str(tmp_path / "run"))


def test_prepared_data_from_other_files_is_refused_not_reused(tmp_path):
    raw = fx.write_tree(tmp_path / "chest_xray", fx.GOOD_TREE)
    factory = prepare.BuilderFactory(
        name="chest_xray", manual_dir=str(raw), data_dir=str(tmp_path / "tfds"), max_size=36
    )
    prepare.ensure_prepared(factory)
    assert prepare.ensure_prepared(factory).is_prepared()  # the same files: reused
    # The same files reached through their parent folder are the same data.
    prepare.ensure_prepared(
        prepare.BuilderFactory(
            name="chest_xray", manual_dir=str(tmp_path), data_dir=str(tmp_path / "tfds"), max_size=36
        )
    )
    other = fx.write_tree(tmp_path / "cleaned", {k: v for k, v in fx.GOOD_TREE.items() if "IM-0001-0002" not in k})
    stale = prepare.BuilderFactory(
        name="chest_xray", manual_dir=str(other), data_dir=str(tmp_path / "tfds"), max_size=36
    )
    with pytest.raises(
        prepare.StalePreparedDataError,
        match=rf"was prepared from {raw} \(16 files.*manual_dir='{other}' now lists 15 files.*delete",
    ):
        prepare.ensure_prepared(stale)


# --- one line per known cause ---------------------------------------------------------------------


def test_a_full_disk_is_one_line_naming_the_file_even_when_wrapped():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/run/checkpoints/6/state/d/0")
        except OSError as e:
            raise RuntimeError("async save failed") from e
    except RuntimeError as wrapped:
        status, message = errors.one_line(wrapped)
    assert status == errors.EXIT_DISK
    assert message == "cannot write /run/checkpoints/6/state/d/0: No space left on device (errno ENOSPC)"


def test_a_bug_keeps_its_traceback():
    assert errors.one_line(ZeroDivisionError("x")) is None
    with pytest.raises(ZeroDivisionError):
        errors.exit_in_one_line("effnet-train", ZeroDivisionError("x"))


def test_many_bad_images_are_one_line_that_counts_the_rest():
    from effnet_jax.data.imaging import BadImageError

    status, message = errors.one_line(BadImageError("3 bad input file(s):\n  /d/a.jpeg: x\n  /d/b.jpeg: y\n  /d/c: z"))
    assert status == errors.EXIT_INPUT and "\n" not in message
    assert message.startswith("3 bad input file(s): /d/a.jpeg: x (+2 more")


@pytest.mark.parametrize(
    "command",
    [["effnet_jax.cli.train", "--config=configs/debug.py"], ["effnet_jax.cli.data", "prepare", "--name=chest_xray"]],
)
def test_a_missing_class_folder_is_one_line_with_exit_status_3(command, tmp_path):
    raw = fx.write_tree(
        tmp_path / "chest_xray", {k: v for k, v in fx.GOOD_TREE.items() if not k.startswith("val/PNEUMONIA")}
    )
    flag = "--config.data.manual_dir" if "train" in command[0] else "--manual_dir"
    data_dir = "--config.data.data_dir" if "train" in command[0] else "--data_dir"
    args = [sys.executable, "-m", *command, f"{flag}={raw}", f"{data_dir}={tmp_path / 'tfds'}"]
    if "train" in command[0]:
        args.append(f"--workdir={tmp_path / 'run'}")
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == errors.EXIT_INPUT, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith(f"{raw}/val/PNEUMONIA: missing class folder (every split needs NORMAL/ and PNEUMONIA/)")
    )
    json.dumps(proc.stderr)  # plain text


def test_a_bad_config_value_is_one_line_with_the_usage_status():
    status, message = errors.one_line(ValueError("data.on_bad_image='maybe': expected one of ('error', 'skip')"))
    assert (status, message) == (errors.EXIT_USAGE, "data.on_bad_image='maybe': expected one of ('error', 'skip')")


def test_an_old_run_whose_raw_folder_is_gone_still_reads_its_prepared_copy(tmp_path):
    import shutil

    raw = fx.write_tree(tmp_path / "chest_xray", fx.GOOD_TREE)
    factory = prepare.BuilderFactory(
        name="chest_xray", manual_dir=str(raw), data_dir=str(tmp_path / "tfds"), max_size=36
    )
    prepare.ensure_prepared(factory)
    shutil.rmtree(raw)
    assert prepare.ensure_prepared(factory).is_prepared()
