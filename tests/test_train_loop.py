"""The real ``train_and_evaluate`` on the synthetic set: end to end, NaN stop, early stopping (resume: test_resume.py)."""

import os

import jax
import numpy as np
import pytest
from helpers import session_compilation_cache
from run_fixtures import resume_config

from effnet_jax import runs as runs_lib
from effnet_jax.data import pipeline
from effnet_jax.data.data_dir import no_external_set_line
from effnet_jax.runs import checkpoints as checkpoint_lib
from effnet_jax.runs.metrics_log import read_metrics
from effnet_jax.train import loop


def _config(**overrides):
    return resume_config(**overrides)


def test_debug_config_trains_end_to_end_and_restores_for_inference(straight_run):
    workdir = straight_run["workdir"]
    assert int(straight_run["state"].step) == 6
    assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()) == [3, 6]
    train = read_metrics(workdir, "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert all(r["data"] == "synthetic" and np.isfinite(r["loss"]) for r in train)
    val = read_metrics(workdir, "validation")
    assert [r["step"] for r in val] == [3, 6]
    for key in ("loss", "accuracy", "auc", "precision", "recall", "specificity", "f1", "confusion_matrix"):
        assert key in val[-1]
    assert val[-1]["n"] == pipeline.split_info(loop.resolve_data(_config()).data, "validation")["num_examples"]
    assert os.listdir(os.path.join(workdir, "tensorboard"))

    run = runs_lib.open(workdir, "latest")
    model, variables = run.model(), run.variables()
    assert run.step == 6 and run.record.image_size == 32
    np.testing.assert_array_equal(
        variables["params"]["classifier"]["kernel"], straight_run["state"].ema_params["classifier"]["kernel"]
    )
    logits = model.apply(variables, np.zeros((2, 32, 32, 3), np.float32), train=False)
    assert logits.shape == (2, 2)


def test_nan_loss_stops_the_run_and_leaves_the_last_good_checkpoint(resumed_run, monkeypatch, tmp_path_factory):
    stopped = resumed_run("stop_after_steps")
    workdir = stopped["at_step_3"]
    real = checkpoint_lib.restore_to_resume

    def poisoned(*args, **kwargs):
        # The resumed weights, all NaN in memory (the checkpoint stays good): the loss is NaN at
        # once, and the step is the program the other runs compiled.
        state, data_state, saved_config = real(*args, **kwargs)
        return state.replace(params=jax.tree.map(lambda x: x * np.nan, state.params)), data_state, saved_config

    monkeypatch.setattr(checkpoint_lib, "restore_to_resume", poisoned)
    with session_compilation_cache(tmp_path_factory):
        with pytest.raises(loop.NonFiniteLossError, match=r"loss is nan at step 4.*last good checkpoint is step 3"):
            loop.train_and_evaluate(_config(), workdir)
    ckpt = checkpoint_lib.Checkpointer(workdir, read_only=True)
    assert ckpt.all_steps() == [3]
    ckpt.close()
    run = runs_lib.open(workdir, "latest")
    variables = run.variables()
    assert run.step == 3
    np.testing.assert_array_equal(
        variables["params"]["classifier"]["kernel"], stopped["first"].ema_params["classifier"]["kernel"]
    )


def test_early_stopping_ends_the_run_after_patience_evaluations_without_improvement(tmp_path, tmp_path_factory, caplog):
    # min_delta=1.0: no AUC can improve by a whole unit, so the second evaluation stops the run.
    config = _config(
        **{
            "eval_every_steps": 2,
            "early_stopping.metric": "auc",
            "early_stopping.mode": "max",
            "early_stopping.patience": 1,
            "early_stopping.min_delta": 1.0,
        }
    )
    workdir = str(tmp_path / "early_stop")
    with session_compilation_cache(tmp_path_factory), caplog.at_level("WARNING", logger="effnet_jax.train"):
        state = loop.train_and_evaluate(config, workdir)
    # No external set: one warning line when the run starts and again when it ends.
    assert [r.getMessage() for r in caplog.records if "NO EXTERNAL SET" in r.getMessage()] == [
        no_external_set_line(config.data)
    ] * 2
    assert int(state.step) == 4
    assert [r["step"] for r in read_metrics(workdir, "validation")] == [2, 4]
    ckpt = checkpoint_lib.Checkpointer(workdir, read_only=True)
    assert ckpt.latest_step() == 4
    ckpt.close()


def test_results_row_reports_the_last_validation_and_the_wall_time_of_every_invocation(resumed_run):
    from effnet_jax.reporting import run_summary

    workdir = resumed_run("stop_after_steps")["workdir"]
    row = run_summary.training_row(runs_lib.open(workdir, checkpoint=None))
    last_val = read_metrics(workdir, "validation")[-1]
    assert (row.name, row.step, row.split, row.image_size) == ("run", 6, "validation", 32)
    assert row.metrics["auc"] == last_val["auc"] and row.metrics["f1"] == last_val["f1"]
    assert row.wall_seconds == pytest.approx(sum(r["wall_seconds"] for r in read_metrics(workdir, "run")))
    assert "1 x cpu" in row.machine
    assert row.data == "synthetic"  # the loop records what it trained on; the debug config has no real data
    table = run_summary.to_markdown([row]).splitlines()
    assert len(table) == 3 and table[2].startswith("| run | ")


def test_the_no_external_set_warning_names_what_changes_and_is_silent_with_external_data():
    line = no_external_set_line(_config().data)
    assert line.startswith("NO EXTERNAL SET: the checkpoint is chosen on validation")
    assert "threshold is the training prior" in line and "--config.data.external=" in line
    assert no_external_set_line({"external": ["/data/other_hospital"]}) is None


def test_the_machine_line_names_the_host_cpu_model_where_linux_says_it(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R)  Xeon(R) Processor\n\n")
    assert loop.host_cpu_model(str(cpuinfo)) == "Intel(R) Xeon(R) Processor"
    cpuinfo.write_text("processor\t: 0\nmodel name\t:\n")  # an empty name: none
    assert loop.host_cpu_model(str(cpuinfo)) is None
    assert loop.host_cpu_model(str(tmp_path / "absent")) is None
    cpuinfo.write_text("model name\t: " + "x" * 500 + "\n")  # kept to one table cell
    assert loop.host_cpu_model(str(cpuinfo)) == "x" * 100
