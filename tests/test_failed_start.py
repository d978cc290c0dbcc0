"""A start that fails on its inputs leaves nothing behind and announces no work first."""

import logging

import pytest
from helpers import tiny_config

from effnet_jax.data.kermany import LayoutError
from effnet_jax.train import loop


def _bad_manual_dir_config(tmp_path):
    return tiny_config(
        **{"data.name": "chest_xray", "data.manual_dir": str(tmp_path / "no_such_folder")},
        **{"data.data_dir": str(tmp_path / "tfds")},
    )


def test_a_bad_manual_dir_leaves_no_data_skeleton_and_no_workdir(tmp_path, caplog):
    workdir = tmp_path / "runs" / "first"
    with caplog.at_level(logging.INFO, logger="effnet_jax"):
        with pytest.raises(LayoutError, match=r"data.manual_dir='.*no_such_folder' does not exist"):
            loop.train_and_evaluate(_bad_manual_dir_config(tmp_path), str(workdir))
    assert not (tmp_path / "tfds").exists()
    assert not workdir.exists() and (tmp_path / "runs").exists()
    assert not [m for m in caplog.messages if m.startswith("preparing ")]


def test_a_failed_start_keeps_a_workdir_that_was_already_there(tmp_path):
    workdir = tmp_path / "mine"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("keep me")
    with pytest.raises(LayoutError):
        loop.train_and_evaluate(_bad_manual_dir_config(tmp_path), str(workdir))
    assert (workdir / "notes.txt").read_text() == "keep me"


def test_a_failed_preparation_removes_the_folders_it_made(tmp_path):
    import data_fixtures as fx

    from effnet_jax.data import imaging, prepare

    raw = fx.write_tree(tmp_path / "chest_xray", {**fx.GOOD_TREE, "train/NORMAL/IM-0999-0001.jpeg": b"not an image"})
    factory = prepare.BuilderFactory(name="chest_xray", data_dir=str(tmp_path / "tfds"), manual_dir=str(raw))
    with pytest.raises(imaging.BadImageError, match="IM-0999-0001.jpeg"):
        prepare.ensure_prepared(factory)
    assert not (tmp_path / "tfds").exists()
