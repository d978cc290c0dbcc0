"""effnet-results: rows from hand-written run directories (config.json, metrics.jsonl, eval reports)."""

import json
import os
import subprocess
import sys

import pytest

from effnet_jax import runs
from effnet_jax.reporting import run_summary

CONFIG = {
    "model": {"name": "tf_efficientnet_lite0"},
    "image_size": 128,
    "num_epochs": 3.0,
    "num_train_steps": -1,
    "freeze_until": "blocks_3",
    "freeze": [],
    "class_weights": "none",
    "label_smoothing": 0.05,
    "ema_decay": 0.99,
    "optimizer": {"learning_rate": 0.001},
    "data": {
        "balance": "oversample",
        "split_protocol": "patient",
        "augment": {"enabled": True, "rotation": 10.0, "scale_min": 0.7},
    },
}


def _metrics(auc, f1, threshold=0.5):
    return {
        "threshold": threshold,
        "accuracy": 0.9,
        "auc": auc,
        "precision": 0.8,
        "recall": 0.7,
        "specificity": 0.95,
        "f1": f1,
        "brier": 0.05,
        "ece": 0.02,
    }


@pytest.fixture
def workdir(tmp_path):
    d = tmp_path / "lite0_128"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(CONFIG))
    records = [
        {"step": 10, "split": "train", "loss": 0.5},
        {"step": 50, "split": "validation", "data": "chest_xray", **_metrics(0.97, 0.90)},
        {"step": 50, "split": "run", "data": "chest_xray", "wall_seconds": 100.0, "machine": "m1"},
        {"step": 100, "split": "validation", "data": "chest_xray", **_metrics(0.99, 0.95)},
        {"step": 100, "split": "run", "data": "chest_xray", "wall_seconds": 80.0, "machine": "m2"},
    ]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    report = {
        "split": "test",
        "step": 100,
        "model": "tf_efficientnet_lite0",
        "image_size": 128,
        "tta": "flip",
        "seconds": 12.5,
        "metrics": {
            "threshold_0.5": _metrics(0.98, 0.93),
            "threshold_training_prior": _metrics(0.98, 0.92, threshold=0.74),
            "threshold_validation_youden": _metrics(0.98, 0.94, threshold=0.7),
        },
    }
    (d / "eval" / "test_100_tta-flip").mkdir(parents=True)
    (d / "eval" / "test_100_tta-flip" / "metrics.json").write_text(json.dumps(report))
    return str(d)


def test_training_row_is_the_last_validation_with_wall_time_summed_over_invocations(workdir):
    row = run_summary.training_row(runs.open(workdir, checkpoint=None))
    assert (row.name, row.step, row.metrics["auc"], row.metrics["f1"]) == ("lite0_128", 100, 0.99, 0.95)
    assert row.wall_seconds == 180.0 and row.machine == "m2"
    assert row.recipe == ("3 ep, frozen<blocks_3, balance=oversample, ls=0.05, ema=0.99, rot=10 scale>=0.7, lr=0.001")


def test_evaluation_rows_one_per_threshold(workdir):
    rows = run_summary.evaluation_rows(runs.open(workdir, checkpoint=None))
    assert [r.name for r in rows] == [
        "lite0_128 (eval test, t=0.5, tta=flip)",
        "lite0_128 (eval test, t=train prior, tta=flip)",
        "lite0_128 (eval test, t=val. Youden, tta=flip)",
    ]
    assert [r.threshold for r in rows] == [0.5, 0.74, 0.7] and [r.metrics["f1"] for r in rows] == [0.93, 0.92, 0.94]


def test_cli_prints_markdown_and_json(workdir):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-m", "effnet_jax.cli.results", workdir, "--eval"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.splitlines()
    assert len(out) == 2 + 4
    assert out[0].startswith("| run | data | variant, px |")
    assert out[2].startswith("| lite0_128 | chest_xray | tf_efficientnet_lite0, 128 | 3 ep,") and "| 0.990 | " in out[2]
    assert out[2].endswith("| 3.0 min | m2 |")
    rows = json.loads(
        subprocess.run(
            [sys.executable, "-m", "effnet_jax.cli.results", workdir, "--format=json"],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
    )
    assert [(r["step"], r["data"]) for r in rows] == [(100, "chest_xray")]


def test_cli_names_a_directory_that_is_not_a_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "effnet_jax.cli.results", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 1 and f"{tmp_path}: no config.json" in proc.stderr


def test_data_column_names_synthetic_runs_and_falls_back_to_the_config(workdir, tmp_path):
    """Which data set a run trained on: the loop's ``data`` field, or the config's for runs that predate it."""
    assert run_summary.training_row(runs.open(workdir, checkpoint=None)).data == "chest_xray"
    assert {r.data for r in run_summary.evaluation_rows(runs.open(workdir, checkpoint=None))} == {"chest_xray"}
    debug = tmp_path / "debug"
    debug.mkdir()
    (debug / "config.json").write_text(json.dumps({**CONFIG, "data": {**CONFIG["data"], "name": "chest_xray"}}))
    # The config asked for chest_xray, but none was at hand and the loop fell back to synthetic.
    record = {"step": 4, "split": "validation", "data": "synthetic", **_metrics(0.7, 0.6)}
    (debug / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    row = run_summary.training_row(runs.open(str(debug), checkpoint=None))
    assert row.data == "synthetic"
    assert run_summary.to_markdown([row]).splitlines()[2].startswith("| debug | synthetic | tf_efficientnet_lite0")
    (debug / "metrics.jsonl").write_text(json.dumps({k: v for k, v in record.items() if k != "data"}) + "\n")
    assert run_summary.training_row(runs.open(str(debug), checkpoint=None)).data == "chest_xray"


def test_evaluation_rows_show_the_operating_threshold_and_bootstrap_intervals(workdir):
    path = os.path.join(workdir, "eval", "test_100_tta-flip", "metrics.json")
    with open(path) as f:
        report = json.load(f)
    operating = _metrics(0.968, 0.93, threshold=0.99)
    operating["ci95"] = {"auc": [0.951, 0.98], "accuracy": [0.9, 0.95], "resamples": 2000, "valid": {}}
    report["metrics"] = {"operating": operating, **report["metrics"]}
    with open(path, "w") as f:
        json.dump(report, f)
    rows = run_summary.evaluation_rows(runs.open(workdir, checkpoint=None))
    assert rows[0].name == "lite0_128 (eval test, t=operating, tta=flip)" and rows[0].threshold == 0.99
    assert rows[0].intervals == {"auc": [0.951, 0.98], "accuracy": [0.9, 0.95]}
    assert rows[1].intervals == {}  # reports without intervals show values alone
    line = run_summary.to_markdown(rows).splitlines()[2]
    assert "| 0.968 [0.951, 0.980] |" in line and "| 0.930 |" in line
