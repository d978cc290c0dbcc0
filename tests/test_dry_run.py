"""effnet-train --dry_run: the resolved config, the data found and what a run would write; nothing written."""

import data_fixtures as fx
import pytest
from helpers import load_config, run_module

from effnet_jax.train import plan


def _snapshot(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_dry_run_on_an_unprepared_folder_counts_its_files_and_writes_nothing(tmp_path):
    raw = fx.write_tree(tmp_path / "chest_xray", fx.GOOD_TREE)
    outside = fx.write_tree(
        tmp_path / "other",
        {"NORMAL/IM-0500-0001.jpeg": fx.jpeg(40), "PNEUMONIA/person500_virus_1.jpeg": fx.jpeg(41)},
    )
    config = load_config("debug")
    config.data.manual_dir = str(raw)
    config.data.data_dir = str(tmp_path / "tfds")
    config.data.external = (str(outside),)
    before = _snapshot(tmp_path)
    text = plan.describe(config, str(tmp_path / "run"))
    assert _snapshot(tmp_path) == before
    assert "  model:\n" not in text and "model:\n" in text and "class_weights: balanced" in text
    assert f"Data: data.name='chest_xray', data.manual_dir='{raw}'" in text
    assert f"  not prepared yet: the run would prepare it once into {tmp_path / 'tfds'}, from:" in text
    assert "  train/: 11 images (NORMAL 5, PNEUMONIA 6)" in text and "  test/: 3 images (NORMAL 2, PNEUMONIA 1)" in text
    assert f"  external: {outside}, 2 images (NORMAL 1, PNEUMONIA 1) (never trained on)" in text
    assert text.endswith(f"Would write: {tmp_path / 'run'}/ (a new run: {plan.WRITTEN}; and the prepared data set)")


def test_effnet_train_dry_run_on_the_sample_prints_splits_and_steps_and_exits(tmp_path):
    workdir = tmp_path / "run"
    args = ["--config=configs/debug.py", f"--workdir={workdir}"]
    proc = run_module("effnet_jax.cli.train", *args, "--dry_run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "  train: 200 images (NORMAL 100, PNEUMONIA 100)\n  validation: 100 images (NORMAL 50, PNEUMONIA 50)\n" in (
        proc.stdout
    )
    assert "Training: 39 steps (3.00 epochs of 13 steps, batch 16), evaluated every 20 steps" in proc.stdout
    assert not workdir.exists()
    proc = run_module("effnet_jax.cli.train", *args, "--config.no_such_key=1")
    assert proc.returncode == 2
    assert "(the schema, effnet_jax/train/config.py, lists every key)" in proc.stderr


def test_dry_run_refuses_a_data_dir_that_is_a_file_as_the_run_would(tmp_path):
    # Before: "the run would prepare it once into <a file>", and the run then refused it.
    raw = fx.write_tree(tmp_path / "chest_xray", fx.GOOD_TREE)
    (tmp_path / "afile").write_text("not a folder")
    config = load_config("debug")
    config.data.manual_dir = str(raw)
    config.data.data_dir = str(tmp_path / "afile")
    with pytest.raises(ValueError) as e:
        plan.describe(config, str(tmp_path / "run"))
    assert str(e.value) == (
        f"data.data_dir='{tmp_path / 'afile'}': not a folder; expected the folder to prepare the data set into"
    )
