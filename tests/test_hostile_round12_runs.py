"""Hostile inputs, round 12: downloaded run directories and half-done sweep folders.

Each fixed case failed before its fix (a traceback, seconds and GBs spent on a metrics log, a
temperature that turns probabilities into NaN, a sweep trained or scored through a planted link)
and is asserted here as the documented behaviour (docs/untrusted-inputs.md). No model is trained.
"""

import json
import os

import numpy as np
import pytest
from export_fixtures import make_workdir
from helpers import run_module, tiny_config

from effnet_jax import runs, sweep
from effnet_jax.inference import tta as tta_lib
from effnet_jax.inference.evaluation import output_dir
from effnet_jax.metrics.calibration import calibrate_probs
from effnet_jax.runs import calibration as calibration_file
from effnet_jax.runs import metrics_log, writer
from effnet_jax.runs.layout import Layout
from effnet_jax.train import soup


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One tiny run with a checkpoint at step 3, shared by the tests that only read it."""
    return make_workdir(tmp_path_factory.mktemp("run"))


# --- metrics.jsonl ---------------------------------------------------------------------------------


def test_a_metrics_log_of_too_many_lines_is_refused_before_parsing(tmp_path):
    # Before: every line became a dict: ten million "{}" lines (28 MB) took 45 s and 1.7 GB.
    (tmp_path / "metrics.jsonl").write_text("{}\n" * (metrics_log.MAX_RECORDS + 1))
    with pytest.raises(ValueError, match=r"metrics\.jsonl: more than 500,000 lines") as info:
        metrics_log.read_metrics_file(str(tmp_path))
    assert "\n" not in str(info.value)


def test_a_metrics_log_is_held_to_an_eighth_of_the_budget(tmp_path, monkeypatch):
    # Before: held to the whole budget (512 MiB), as JSON that becomes objects many times its size.
    monkeypatch.setenv("EFFNET_JAX_DECODE_BUDGET", "8M")
    line = json.dumps({"step": 1, "split": "train", "x": [0] * 1000}) + "\n"
    (tmp_path / "metrics.jsonl").write_text(line * (1100 * 1024 // len(line) + 1))  # just over 1 MiB
    with pytest.raises(ValueError, match=r"metrics\.jsonl: the metrics log would take .* 1,048,576 bytes"):
        metrics_log.read_metrics_file(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text(line * 100)  # a real log's size reads as before
    assert len(metrics_log.read_metrics_file(str(tmp_path))[0]) == 100


def test_a_run_record_without_a_step_does_not_stop_a_resumed_sweep_or_soup(tmp_path, monkeypatch):
    # Before: KeyError 'step' (a traceback) in run_finished, which effnet-sweep and seed soups call on resume.
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"split": "run", "stopped_early": True}) + "\n")
    monkeypatch.setattr(soup, "_latest_step", lambda workdir: 3)
    assert soup.run_finished(str(tmp_path), 100) is False
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 3, "split": "run", "stopped_early": True}) + "\n")
    assert soup.run_finished(str(tmp_path), 100) is True


def test_a_record_without_a_step_does_not_stop_a_resumed_run(tmp_path):
    # Before: KeyError 'step' (a traceback) when effnet-train resumed and dropped the records past its step.
    records = [{"split": "note"}, {"step": 2, "split": "train"}, {"step": 9, "split": "train"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    writer.truncate_after(str(tmp_path), 5)
    assert [r.get("step") for r in metrics_log.read_metrics(str(tmp_path))] == [None, 2]


# --- calibration.json ------------------------------------------------------------------------------

_CALIBRATION = {"fitted_on": "validation", "step": 3, "ece_before": 0.1, "ece_after": 0.05, "n": 9}


@pytest.mark.parametrize("temperature", [5e-324, 1e-5, 1e308, 1000.0, 0.0, -2.0])
def test_a_temperature_outside_the_fitters_range_is_refused_naming_the_file(tmp_path, temperature):
    # Before: any positive finite T was applied: 5e-324 gives NaN probabilities past two classes,
    # 1e308 a line of 300 digits.
    if temperature == 5e-324:
        with np.errstate(all="ignore"):
            assert np.isnan(calibrate_probs(np.array([[0.3, 0.3, 0.4]]), temperature)).all()
    (tmp_path / "calibration.json").write_text(json.dumps({"temperature": temperature, **_CALIBRATION}))
    with pytest.raises(ValueError, match=r"calibration\.json: temperature=.*: expected a number from 0\.01 to 100"):
        calibration_file.read_calibration(Layout(str(tmp_path)))


@pytest.mark.parametrize("temperature", [0.01, 0.010000000000000004, 1.5, 100.00000000000004])
def test_every_temperature_the_fitter_returns_still_reads(tmp_path, temperature):
    (tmp_path / "calibration.json").write_text(json.dumps({"temperature": temperature, **_CALIBRATION}))
    assert calibration_file.read_calibration(Layout(str(tmp_path))).temperature == temperature


# --- half-done sweep folders -----------------------------------------------------------------------


def _stored_report(run, report: dict) -> str:
    folder = output_dir(run, "validation", tta_lib.parse_tta(None))
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "metrics.json")
    with open(path, "w") as f:
        json.dump(report, f)
    return path


@pytest.mark.parametrize(
    "report, key",
    [
        ({"metrics": {"operating": {"auc": 0.5}}}, "operating_threshold"),
        ({"operating_threshold": 0.5, "metrics": {}}, "metrics.operating"),
        ({"operating_threshold": 0.5, "metrics": {"operating": {"auc": 0.5}}}, "metrics.operating.accuracy"),
    ],
)
def test_a_stored_report_without_what_a_sweep_row_copies_is_one_line(workdir, report, key):
    # Before: KeyError (a traceback) scoring a point of a resumed sweep whose eval/ report lacked the key.
    run = runs.open(workdir)
    path = _stored_report(run, {"split": "validation", "step": run.step, **report})
    point = sweep.Point({}, "p", tiny_config(), workdir)
    with pytest.raises(ValueError, match=f"no {key};") as info:
        sweep.score_point(point)
    assert path in str(info.value) and "\n" not in str(info.value)


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


# --- representative cases that were already refused or read ---------------------------------------


@pytest.mark.parametrize(
    "record, message",
    [
        ({"image_size": 10**9, "mean": [0.5], "std": [0.5], "train_class_counts": []}, "image_size="),
        ({"image_size": 32, "mean": [float("nan")], "std": [0.5], "train_class_counts": []}, "mean="),
        ({"image_size": 32, "mean": [0.5, 0.5], "std": [0.5, 0.5], "train_class_counts": []}, "1 or 3 values"),
    ],
)
def test_run_json_values_a_run_never_records_are_refused_naming_the_key(tmp_path, record, message):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    (tmp_path / "run.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=message) as info:
        runs.open(str(tmp_path), None)
    assert "run.json" in str(info.value)


def test_a_metrics_log_line_of_nested_or_huge_values_is_read_as_data(tmp_path):
    lines = [{"step": 1, "split": "train", "loss": 1e308, "x": {"y": [1, 2]}}, {"step": 2, "split": "train"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + "NaN\n")
    records, torn = metrics_log.read_metrics_file(str(tmp_path))
    assert [r["step"] for r in records] == [1, 2] and torn
