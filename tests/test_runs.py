"""The run directory: one module names its files, and runs.open reads it into one value."""

import json
import pathlib
import re

import pytest

from effnet_jax import runs
from effnet_jax.metrics.calibration import Calibration
from effnet_jax.runs import calibration as calibration_file
from effnet_jax.runs import layout
from effnet_jax.runs.layout import Layout

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "effnet_jax"


def test_only_the_layout_spells_the_names_of_a_runs_files():
    pattern = re.compile(r'"(config|run|calibration|soup)\.json"|"metrics\.jsonl"|"MODEL_CARD\.md"|"\.lock"')
    found = [
        f"{path.relative_to(PACKAGE)}:{i}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found and {f.split(":")[0] for f in found} == {"runs/layout.py"}


def test_layout_paths(tmp_path):
    paths = Layout(str(tmp_path))
    assert paths.config == str(tmp_path / "config.json") and paths.run_record == str(tmp_path / "run.json")
    assert paths.member(3) == str(tmp_path / "members" / "seed_3")
    assert paths.eval_report("test_6") == str(tmp_path / "eval" / "test_6" / "metrics.json")
    assert Layout("gs://bucket/run").checkpoints == "gs://bucket/run/checkpoints"
    assert layout.absolute("gs://bucket/run") == "gs://bucket/run"


def _run_directory(tmp_path) -> str:
    config = {"model": {"name": "efficientnet_lite0"}, "data": {"name": "synthetic"}, "seed": 3}
    (tmp_path / "config.json").write_text(json.dumps(config))
    record = {"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "train_class_counts": [30, 34]}
    (tmp_path / "run.json").write_text(json.dumps(record))
    lines = [{"step": 3, "split": "validation", "auc": 0.5, "data": "synthetic"}, {"step": 3, "split": "run"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (tmp_path / "soup.json").write_text(json.dumps({"combine": "weights", "members": []}))
    calibration_file.write_calibration(Layout(str(tmp_path)), Calibration(2.0, "validation", 3, 0.2, 0.1, 16))
    (tmp_path / "eval" / "test_3").mkdir(parents=True)
    (tmp_path / "eval" / "test_3" / "metrics.json").write_text(json.dumps({"step": 3, "metrics": {}}))
    return str(tmp_path)


def test_open_without_a_checkpoint_reads_every_file_once_into_the_value(tmp_path):
    run = runs.open(_run_directory(tmp_path), checkpoint=None)
    assert run.step is None and run.config.seed == 3 and run.record.train_class_counts == (30, 34)
    assert run.input_spec == (32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert [r["split"] for r in run.metrics] == ["validation", "run"] and run.records("run") == [run.metrics[1]]
    assert run.training_data == "synthetic" and run.soup == {"combine": "weights", "members": []}
    assert run.calibration.temperature == 2.0 and run.ensemble_size is None
    assert run.eval_reports() == [(str(tmp_path / "eval" / "test_3" / "metrics.json"), {"step": 3, "metrics": {}})]
    with pytest.raises(ValueError, match="opened without a checkpoint"):
        run.variables()


def test_the_temperature_applies_to_the_checkpoint_it_was_fitted_at(tmp_path):
    import dataclasses

    run = runs.open(_run_directory(tmp_path), checkpoint=None)
    assert dataclasses.replace(run, step=3).temperature()[0] == 2.0
    assert dataclasses.replace(run, step=6).temperature() == (
        1.0,
        "uncalibrated (calibration.json was fitted at step 3, not 6)",
    )


def test_a_bad_calibration_file_fails_the_open_naming_it(tmp_path):
    workdir = _run_directory(tmp_path)
    (tmp_path / "calibration.json").write_text("{broken")
    with pytest.raises(ValueError, match=f"{tmp_path / 'calibration.json'}: not a valid calibration file"):
        runs.open(workdir, checkpoint=None)
