"""Hostile inputs, round 12: what a trainer writes into a planted run folder, prepared sets that are not.

Each case failed before the fix it names: a dangling ``checkpoints`` link in a fresh workdir
ended effnet-train in a FileExistsError traceback, and a ``tensorboard`` link had the events
written where it led; an empty version folder in ``data.data_dir`` (or a link to one) was
"reused" by TFDS as a prepared set with no files, and a link among a prepared set's files was
read through; a full disk during the PneumoniaMNIST download was reported as "Offline?"; an
exported function declaring a large tensor per image was called on a whole batch at once.
"""

import errno
import io
import os
import urllib.request

import jax.numpy as jnp
import numpy as np
import pytest
from data_fixtures import GOOD_TREE, write_tree
from helpers import run_module, tiny_config

from effnet_jax.cli import data as data_cli
from effnet_jax.data.builders import pneumonia_mnist
from effnet_jax.output_files import UnsafeOutputError
from effnet_jax.runs import layout as layout_lib
from effnet_jax.train import loop, soup

VICTIM_TEXT = "not yours\n"


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


# --- 1. a run folder with links planted at the names a run writes ---------------------------------

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


def test_a_seed_ensemble_refuses_a_planted_members_link_before_creating_its_workdir_files(tmp_path):
    outside = _outside(tmp_path)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "members").symlink_to(outside)
    with pytest.raises(soup.SoupWorkdirError, match=f"^--workdir={workdir / 'members'}: is a symbolic link to "):
        soup.train_soup(tiny_config(num_train_steps=1, soup_seeds=2), str(workdir))
    assert sorted(p.name for p in workdir.iterdir()) == ["members"]
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]


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


# --- 2. a prepared version folder that no preparation wrote ---------------------------------------


def _prepare(root, data_dir):
    return data_cli.main(
        ["prepare", "--name=chest_xray", f"--manual_dir={root}", f"--data_dir={data_dir}", "--max_size=32"]
    )


def test_an_empty_version_folder_is_refused_not_reused_as_a_prepared_set(tmp_path, capsys):
    # Before: TFDS "reused" it: effnet-data prepare printed the split counts and the trainer
    # then had no files to read.
    root = write_tree(tmp_path / "raw", GOOD_TREE)
    version = tmp_path / "tfds" / "chest_xray" / "max32" / "1.0.0"
    version.mkdir(parents=True)
    assert _prepare(root, tmp_path / "tfds") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"effnet-data: {version}: a prepared data set's folder without its dataset_info.json, not written by a "
        "preparation; remove it to prepare the data set again, or set data.data_dir to another folder"
    )
    assert not list(version.iterdir())


@pytest.mark.parametrize("prepared", [False, True])
def test_a_version_folder_linked_elsewhere_is_refused(tmp_path, capsys, prepared):
    # Before: a link to an empty folder was "reused" as above; one to a set prepared elsewhere was read there.
    root = write_tree(tmp_path / "raw", GOOD_TREE)
    target = tmp_path / "elsewhere" / "chest_xray" / "max32" / "1.0.0"
    if prepared:
        assert _prepare(root, tmp_path / "elsewhere") == 0
    else:
        target.mkdir(parents=True)
    capsys.readouterr()
    version = tmp_path / "tfds" / "chest_xray" / "max32" / "1.0.0"
    version.parent.mkdir(parents=True)
    version.symlink_to(target)
    assert _prepare(root, tmp_path / "tfds") == 4
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"effnet-data prepare: {version}: is a symbolic link to {target}; refusing to read the data set through it "
        "(remove the link, or set data.data_dir to another folder)"
    )
    assert prepared or not list(target.iterdir())


def test_a_link_among_a_prepared_sets_files_is_refused_and_the_set_itself_reads(tmp_path, capsys):
    root = write_tree(tmp_path / "raw", GOOD_TREE)
    data_dir = tmp_path / "tfds"
    assert _prepare(root, data_dir) == 0
    assert _prepare(root, data_dir) == 0  # prepared: read back, not prepared again
    capsys.readouterr()
    version = data_dir / "chest_xray" / "max32" / "1.0.0"
    shard = next(p for p in version.iterdir() if "train.array_record" in p.name)
    moved = tmp_path / "moved"
    shard.rename(moved)
    shard.symlink_to(moved)
    assert _prepare(root, data_dir) == 4
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"effnet-data prepare: {shard}: is a symbolic link to {moved}; a prepared data set holds its own files: "
        "refusing to read through it (prepare the set again)"
    )


# --- 3. the PneumoniaMNIST download: the disk's fault is not the network's ------------------------


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_a_full_disk_during_the_download_is_named_as_the_disk_not_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: _Response(b"x" * (3 << 20)))

    class _Full(io.BufferedWriter):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    real = pneumonia_mnist.open_output
    monkeypatch.setattr(pneumonia_mnist, "open_output", lambda path, mode: _Full(real(path, mode)))
    folder = tmp_path / "downloads"
    partial = folder / "pneumoniamnist.partial"
    with pytest.raises(RuntimeError) as raised:
        pneumonia_mnist._download(28, folder)
    assert str(raised.value) == f"{partial}: cannot write the download there (No space left on device)"
    assert not partial.exists()


def test_a_network_failure_is_still_offline(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise urllib.error.URLError("no route")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(RuntimeError, match=r"could not download .*Offline\? Download pneumoniamnist\.npz"):
        pneumonia_mnist._download(28, tmp_path / "downloads")
    assert not (tmp_path / "downloads" / "pneumoniamnist.partial").exists()


# --- 4. an exported function whose every image takes much memory: called a few images at a time ----


def _wide(weights, images):
    # 16 MiB of float32 per image, under the budget for one image, not for a batch of them.
    planes = (
        jnp.ones((images.shape[0], 2048, 2048), jnp.float32)
        * images.astype(jnp.float32).mean(axis=(1, 2))[:, None, None]
    )
    return planes.mean(axis=(1, 2)) / 255.0


def test_an_exported_function_is_called_on_as_many_images_as_fit_the_budget(exported, tmp_path, monkeypatch):
    # Before: the whole batch in one call: 32 images of such a function took 32 times the budget.
    from test_hostile_round4 import _with_function

    from effnet_jax import serving

    monkeypatch.setenv("EFFNET_JAX_DECODE_BUDGET", "64M")
    model = serving.load(str(_with_function(exported, tmp_path, _wide)))
    assert model.max_batch == 4
    calls = []
    call = model._call
    model._call = lambda weights, images: calls.append(len(images)) or call(weights, images)
    images = np.arange(10 * 32 * 32, dtype=np.int64).reshape(10, 32, 32).astype(np.uint8)
    probs = model.run(images)
    assert calls == [4, 4, 2]
    np.testing.assert_allclose(probs, images.astype(np.float32).mean(axis=(1, 2)) / 255.0, rtol=1e-6)


def test_the_real_export_is_called_in_one_piece_for_any_usual_batch(exported):
    from effnet_jax import serving

    model = serving.load(exported)
    assert model.max_batch >= 256  # its largest tensor for one image is a few hundred KB at 32 px
    calls = []
    call = model._call
    model._call = lambda weights, images: calls.append(len(images)) or call(weights, images)
    assert model.run(np.zeros((64, 32, 32), np.uint8)).shape == (64,) and calls == [64]
