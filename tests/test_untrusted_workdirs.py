"""Run folders our commands write into: effnet-train's workdir, soups, seed ensembles and sweeps.

A workdir may be reused, downloaded or shared. One trainer holds it at a time; nothing is written
(and no lock taken) through a link, FIFO or file planted at a name a run writes, whether by
effnet-train, effnet-soup, effnet-sweep, effnet-eval, the calibration or the model card; a resume
checks the saved run before any work; and a full disk is said in one line with exit status 5
(docs/untrusted-inputs.md, docs/untrusted-outputs.md).
"""

import errno
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import VICTIM_TEXT, machinery_config, run_module, stand_in_run, tiny_config, train_synthetic, victim_file
from run_fixtures import resume_config

from effnet_jax import runs, sweep
from effnet_jax.cli import errors
from effnet_jax.inference import evaluation
from effnet_jax.metrics.calibration import Calibration
from effnet_jax.output_files import UnsafeOutputError
from effnet_jax.runs import calibration as calibration_file
from effnet_jax.runs import checkpoints as checkpoint_lib
from effnet_jax.runs import layout as layout_lib
from effnet_jax.runs.layout import Layout
from effnet_jax.runs.lock import WorkdirLock, WorkdirLockedError
from effnet_jax.train import loop, soup

# --- one trainer per workdir ----------------------------------------------------------------------


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
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
    with pytest.raises(WorkdirLockedError, match=f"{workdir} is in use by another trainer \\(pid {holder.pid} on"):
        loop.train_and_evaluate(resume_config(), str(workdir))
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


def _plant_over(path, kind, victim):
    if kind == "symlink":
        path.symlink_to(victim)
    elif kind == "dangling":
        path.symlink_to(victim.parent / "new")
    elif kind == "hardlink":
        os.link(victim, path)
    else:
        os.mkfifo(path)


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_a_workdir_lock_is_never_taken_through_a_planted_link_or_fifo(tmp_path, kind):
    # Before: os.open(O_RDWR | O_CREAT) followed the link and ftruncate emptied its target.
    victim = victim_file(tmp_path)
    workdir = tmp_path / "run"
    workdir.mkdir()
    _plant_over(workdir / ".lock", kind, victim)
    with pytest.raises(UnsafeOutputError, match=f"^{workdir / '.lock'}: "):
        WorkdirLock(str(workdir)).acquire()
    assert victim.read_text() == VICTIM_TEXT


# --- names planted where a trainer writes ---------------------------------------------------------


def _outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "victim.txt").write_text(VICTIM_TEXT)
    return outside


def _plant(path, kind, outside):
    if kind == "link":
        path.symlink_to(outside)
    elif kind == "file-link":
        path.symlink_to(outside / "victim.txt")
    elif kind == "dangling":
        path.symlink_to(outside / "new")
    elif kind == "fifo":
        os.mkfifo(path)
    else:  # a plain file where a folder belongs
        path.write_text("x")


PLANTED = [
    ("checkpoints", "dangling"),
    ("checkpoints", "link"),
    ("tensorboard", "link"),
    ("tensorboard", "dangling"),
    ("members", "link"),
    ("eval", "file"),
    ("metrics.jsonl", "file-link"),
    ("config.json", "dangling"),
    ("calibration.json", "fifo"),
    ("adapted.json", "file-link"),
]


@pytest.mark.parametrize("name, kind", PLANTED)
def test_a_trainer_refuses_a_planted_name_in_its_workdir_before_anything_is_written(tmp_path, name, kind):
    # Before: a dangling checkpoints/ link was a FileExistsError from orbax after the model was
    # built, a tensorboard/ link had the events written where it led.
    outside = _outside(tmp_path)
    workdir = tmp_path / "run"
    workdir.mkdir()
    _plant(workdir / name, kind, outside)
    with pytest.raises(UnsafeOutputError, match=f"^--workdir={workdir / name}: "):
        loop.train_and_evaluate(tiny_config(num_train_steps=1), str(workdir))
    assert sorted(p.name for p in workdir.iterdir()) == [name]
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert (outside / "victim.txt").read_text() == VICTIM_TEXT


def test_effnet_train_says_a_dangling_checkpoints_link_in_one_line(tmp_path):
    outside = _outside(tmp_path)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "checkpoints").symlink_to(outside / "new")
    done = run_module(
        "effnet_jax.cli.train",
        "--config=configs/debug_synthetic.py",
        f"--workdir={workdir}",
        "--config.num_train_steps=1",
        "--config.image_size=32",
    )
    assert done.returncode == 4, done.stderr[-2000:]  # an unsafe output, as effnet-data prepare says it
    assert done.stderr.strip().splitlines()[-1] == (
        f"effnet-train: --workdir={workdir / 'checkpoints'}: is a symbolic link to {outside / 'new'}; "
        "refusing to write the run through it"
    )
    assert not (outside / "new").exists() and sorted(p.name for p in workdir.iterdir()) == ["checkpoints"]


def test_a_run_folder_of_our_own_passes_the_check(tmp_path):
    workdir = tmp_path / "run"
    for name in layout_lib.WRITTEN_FOLDERS:
        (workdir / name).mkdir(parents=True)
    for name in ("config.json", "metrics.jsonl", ".lock"):
        (workdir / name).write_text("{}")
    assert layout_lib.planted_output_problem(str(workdir)) is None
    assert layout_lib.planted_output_problem(str(tmp_path / "new")) is None
    assert layout_lib.planted_output_problem("gs://bucket/run") is None


def test_training_refuses_a_config_json_link_planted_in_the_workdir_in_one_line(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours\n")
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").symlink_to(outside)
    done = train_synthetic(workdir)
    assert done.returncode == 4, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"effnet-train: --workdir={workdir}/config.json: is a symbolic link; refusing to write through it"
    )
    assert "Traceback" not in done.stderr
    assert outside.read_text() == "not yours\n"


# --- soups, seed ensembles and sweeps -------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kind",
    [
        (".lock", "symlink"),
        (".lock", "hardlink"),
        ("config.json", "symlink"),
        ("run.json", "fifo"),
        ("metrics.jsonl", "dangling"),
        ("soup.json", "dangling"),
        ("MODEL_CARD.md", "hardlink"),
        ("MODEL_CARD.md.tmp", "symlink"),
        ("checkpoints", "dangling"),
    ],
)
def test_a_soup_refuses_a_planted_name_in_its_workdir_before_any_work(tmp_path, name, kind):
    # Before: the .lock target was truncated at once; the others were refused only after the
    # evaluation (and the records after the checkpoint was written), a dangling checkpoints/ link
    # as "File exists".
    from effnet_jax.train.soup import SoupWorkdirError, make_soup

    victim = victim_file(tmp_path)
    workdir = tmp_path / "soup"
    workdir.mkdir()
    _plant_over(workdir / name, kind, victim)
    members = [str(tmp_path / "a"), str(tmp_path / "b")]  # never read: the refusal comes first
    with pytest.raises(
        SoupWorkdirError, match=f"^--workdir={workdir / name}: (is a symbolic link|not a regular|has 2)"
    ):
        make_soup(members, str(workdir))
    assert victim.read_text() == VICTIM_TEXT
    assert sorted(p.name for p in workdir.iterdir()) == [name]


def test_effnet_soup_says_a_planted_lock_in_one_line(tmp_path):
    victim = victim_file(tmp_path)
    workdir = tmp_path / "soup"
    workdir.mkdir()
    (workdir / ".lock").symlink_to(victim)
    done = run_module("effnet_jax.cli.soup", f"--workdir={workdir}", f"--members={tmp_path / 'a'},{tmp_path / 'b'}")
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"effnet-soup: error: --workdir={workdir / '.lock'}: is a symbolic link; refusing to write through it"
    )
    assert victim.read_text() == VICTIM_TEXT


def test_a_seed_ensemble_refuses_a_planted_members_link_before_creating_its_workdir_files(tmp_path):
    outside = _outside(tmp_path)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "members").symlink_to(outside)
    with pytest.raises(soup.SoupWorkdirError, match=f"^--workdir={workdir / 'members'}: is a symbolic link to "):
        soup.train_soup(tiny_config(num_train_steps=1, soup_seeds=2), str(workdir))
    assert sorted(p.name for p in workdir.iterdir()) == ["members"]
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]


@pytest.mark.parametrize("linked", ["points", "point"])
def test_a_sweep_never_trains_or_scores_through_a_linked_points_folder(tmp_path, monkeypatch, linked):
    # Before: points/ (or a point's folder) linked elsewhere in a downloaded half-done sweep was
    # trained into, or its run there scored as the point's.
    monkeypatch.setattr(sweep, "run_experiment", lambda *a: pytest.fail("trained through the link"))
    config, axes = tiny_config(), [sweep.parse_axis("seed=[0,1]")]
    elsewhere, folder = tmp_path / "elsewhere", tmp_path / "sweep"
    elsewhere.mkdir()
    folder.mkdir()
    if linked == "points":
        (folder / "points").symlink_to(elsewhere)
        link = folder / "points"
    else:
        (folder / "points").mkdir()
        link = folder / "points" / sweep.plan(config, str(folder), axes)[1].slug
        link.symlink_to(elsewhere)
    with pytest.raises(ValueError, match="a link to .*never read or written through a link") as info:
        sweep.run_sweep(config, str(folder), axes, progress=False)
    assert str(link) in str(info.value)
    assert not os.listdir(elsewhere)


def test_effnet_sweep_says_a_linked_points_folder_in_one_line(tmp_path):
    # Before: the sweep trained its points into the folder the link led to.
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "points").symlink_to(tmp_path / "elsewhere")
    args = ("--config=configs/debug_synthetic.py", f"--workdir={tmp_path / 'sweep'}", "--sweep=seed=[0,1]")
    result = run_module("effnet_jax.cli.sweep", *args)
    assert result.returncode == 4, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"effnet-sweep: {tmp_path / 'sweep' / 'points'}: a link")
    assert "Traceback" not in result.stderr and not os.listdir(tmp_path / "elsewhere")


# --- what effnet-eval, the calibration and the model card write into a run ------------------------


def test_eval_outputs_never_go_through_a_planted_link(run_copy, tmp_path):
    run = runs.open(run_copy, "latest")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, run.layout.eval)  # eval/ itself
    with pytest.raises(UnsafeOutputError, match="eval: a link or not a folder"):
        evaluation._output_folder(run, run.layout.eval_dir("validation_3"))
    os.remove(run.layout.eval)
    os.makedirs(run.layout.eval)
    os.symlink(outside, run.layout.eval_dir("validation_3"))  # eval/<split>_<step>
    with pytest.raises(UnsafeOutputError, match="validation_3: a link or not a folder"):
        evaluation._output_folder(run, run.layout.eval_dir("validation_3"))
    # A plot's name: matplotlib would write through the link.
    folder = evaluation._output_folder(run, run.layout.eval_dir("test_3"))
    target = tmp_path / "keep.png"
    target.write_bytes(b"keep")
    os.symlink(target, os.path.join(folder, "roc.png"))
    with pytest.raises(UnsafeOutputError, match="roc.png: is a symbolic link"):
        evaluation._own(os.path.join(folder, "roc.png"))
    assert target.read_bytes() == b"keep" and os.listdir(outside) == []


def test_effnet_eval_refuses_an_eval_link_before_writing_anything(run_copy, tmp_path):
    import subprocess
    import sys

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, Layout(run_copy).eval)
    result = subprocess.run(
        [sys.executable, "-m", "effnet_jax.cli.evaluate", f"--workdir={run_copy}"], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "its eval/ folder is a link; refusing to write through it" in result.stderr
    assert "Traceback" not in result.stderr and os.listdir(outside) == []


def test_calibration_is_never_written_through_a_link_at_its_temporary_name(run_copy, tmp_path):
    target = tmp_path / "keep"
    target.write_text("keep")
    layout = Layout(run_copy)
    os.symlink(target, layout.calibration + ".tmp")
    calibration = Calibration(temperature=1.5, fitted_on="validation", step=3, ece_before=0.1, ece_after=0.05, n=8)
    with pytest.raises(UnsafeOutputError, match="calibration.json.tmp: is a symbolic link"):
        calibration_file.write_calibration(layout, calibration)
    assert target.read_text() == "keep"


def test_a_folder_planted_at_calibration_json_is_one_line(run_copy):
    os.makedirs(Layout(run_copy).calibration)
    with pytest.raises(UnsafeOutputError, match="calibration.json: a folder"):
        calibration_file.write_calibration(
            Layout(run_copy),
            Calibration(temperature=1.5, fitted_on="validation", step=3, ece_before=0.1, ece_after=0.05, n=8),
        )


def test_records_and_the_model_card_are_never_written_through_planted_links(run_copy, tmp_path):
    from effnet_jax.output_files import open_output, write_text
    from effnet_jax.reporting.model_card import write_model_card
    from effnet_jax.runs.writer import MetricWriter

    outside = tmp_path / "outside.txt"
    outside.write_text("theirs\n")
    layout = Layout(run_copy)
    # Appending: the metrics log of a run whose metrics.jsonl was swapped for a link after it was opened.
    os.remove(layout.metrics)
    os.symlink(outside, layout.metrics)
    writer = MetricWriter(run_copy, extra={})
    with pytest.raises(UnsafeOutputError, match="metrics.jsonl: is a symbolic link"):
        writer.write(4, "validation", {"auc": 0.7})
    writer.close()
    # The run record, a soup's config and soup.json go through write_text.
    os.symlink(outside, str(tmp_path / "record_link.json"))
    with pytest.raises(UnsafeOutputError, match="record_link.json: is a symbolic link"):
        write_text(str(tmp_path / "record_link.json"), "{}")
    # The model card's temporary file.
    os.remove(layout.metrics)
    shutil.copy(Layout(stand_in_run(str(tmp_path / "clean"))).metrics, layout.metrics)
    os.symlink(outside, layout.model_card + ".tmp")
    with pytest.raises(UnsafeOutputError, match=r"MODEL_CARD.md.tmp: is a symbolic link"):
        write_model_card(runs.open(run_copy, checkpoint=None))
    assert outside.read_text() == "theirs\n"
    # Appending to a file of our own adds to it.
    own = tmp_path / "own.jsonl"
    own.write_text("a\n")
    with open_output(own, "a") as f:
        f.write("b\n")
    assert own.read_text() == "a\nb\n"


# --- resuming -------------------------------------------------------------------------------------


def test_resuming_with_another_model_name_is_one_clear_error(tmp_path, monkeypatch):
    # The saved config alone decides, before any model is built: a checkpoint of a stand-in state is enough.
    workdir = tmp_path / "run"
    state = {"params": {"w": np.zeros(3, np.float32)}}
    checkpoint_lib.write_checkpoint(str(workdir), 3, state, {"position": 3}, resume_config())

    def never(*args, **kwargs):
        raise AssertionError("a model was built before the saved config was checked")

    monkeypatch.setattr(loop.state_lib, "model_from_config", never)
    with pytest.raises(
        checkpoint_lib.CheckpointMismatchError,
        match=r"saved with model.name='efficientnet_test' but the config asks for 'efficientnet_b0'",
    ):
        loop.train_and_evaluate(resume_config(**{"model.name": "efficientnet_b0"}), str(workdir))
    status, message = errors.one_line(checkpoint_lib.CheckpointMismatchError("x"))
    assert status == errors.EXIT_WORKDIR


def _step(workdir, *parts):
    return os.path.join(workdir, "checkpoints", "3", *parts)


def test_resuming_a_run_whose_checkpoint_holds_a_fifo_is_refused_without_blocking(run_copy):
    # Before: effnet-train's resume opened checkpoints/3/state/_METADATA, a FIFO, and waited forever.
    path = _step(run_copy, "state", "_METADATA")
    os.remove(path)
    os.mkfifo(path)
    with pytest.raises(checkpoint_lib.CheckpointMismatchError, match=f"{path}: not a regular file"):
        checkpoint_lib.check_workdir_resumable(run_copy, machinery_config())


# --- a full disk: exit 5 in one line --------------------------------------------------------------


_DISK_FULL = """
import errno, sys
from effnet_jax.runs import record as run_record
def full(workdir, record):
    raise OSError(errno.ENOSPC, "No space left on device", workdir + "/run.json")
run_record.write = full
sys.argv = ["effnet-train", "--config=configs/debug_synthetic.py", "--workdir=" + sys.argv[1],
            "--config.image_size=32", "--config.data.synthetic_examples=32", "--config.batch_size=8"]
from effnet_jax.cli.train import run
run()
"""


def test_a_full_disk_during_training_exits_5_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _DISK_FULL, str(tmp_path / "run")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == errors.EXIT_DISK, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"effnet-train: cannot write {tmp_path / 'run'}/run.json: No space left on device (errno ENOSPC)"
    )
    assert "Traceback" not in proc.stderr


def test_a_full_disk_reported_by_tensorstore_is_exit_5_and_said_once(caplog):
    text = (
        'RESOURCE_EXHAUSTED: Error writing "params.x/0" in OCDBT database at local file "/w/checkpoints/20/state/": '
        "Failed to write 2282169 bytes to file 8: No space left on device [os_error_code='28']"
    )
    try:
        try:
            raise ValueError(text)
        except ValueError as e:
            raise RuntimeError("save failed") from e
    except RuntimeError as wrapped:
        assert errors.one_line(wrapped) == (
            errors.EXIT_DISK,
            "cannot write /w/checkpoints/20/state/: No space left on device",
        )
    log = logging.getLogger("test_untrusted_workdirs.disk")
    shared = errors.DiskErrorsInOneLine()
    log.addFilter(shared)  # as on absl's logger and on the root logger's handlers: one instance
    caplog.handler.addFilter(shared)
    with caplog.at_level(logging.INFO, logger=log.name):
        for _ in range(3):
            try:
                raise ValueError(text)
            except ValueError:
                log.exception("Task exception was never retrieved")
        log.info("an ordinary line")
    assert [r.getMessage() for r in caplog.records] == [
        "writing failed /w/checkpoints/20/state/: No space left on device (a background save; the run stops at its "
        "next wait)",
        "an ordinary line",
    ]
    assert caplog.records[0].exc_info is None


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
