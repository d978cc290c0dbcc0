"""Hostile inputs, round 13: what the earlier rounds left named but open.

A downloaded run's machine or code line of megabytes copied into a results record; reports,
predictions, cards and calibrations truncated by a kill mid-write.
"""

import os
import types

import numpy as np
import pytest
from helpers import hand_made_run

from effnet_jax import output_files
from effnet_jax.cli import results as results_cli
from effnet_jax.inference import evaluation


@pytest.mark.parametrize("key, flag", [("machine", "--machine"), ("code", "--commit")])
def test_a_run_line_of_megabytes_is_not_copied_into_a_results_record(tmp_path, key, flag):
    # Before: effnet-results record copied a downloaded run's 'machine' or 'code' of any length
    # into the record, and every table rendered from it.
    line = {"step": 3, "split": "run", "machine": "cpu", "code": "abc1234", key: "x" * 5_000_000}
    run = hand_made_run(tmp_path, {}, metrics=[{"step": 1, "split": "run", key: "short"}, line])
    with pytest.raises(ValueError) as e:
        results_cli._last_run_line(run, key)
    assert str(e.value) == (
        f"{tmp_path}/metrics.jsonl: the run's {key} is 5,000,000 characters, more than the 300 a trainer "
        f"writes; say which with {flag}"
    )
    assert results_cli._last_run_line(hand_made_run(tmp_path, {}, metrics=[line | {key: "y" * 300}]), key) == "y" * 300


# --- outputs replaced whole ------------------------------------------------------------------------


def test_a_write_stopped_part_way_leaves_the_earlier_file_whole(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("the earlier report")
    with pytest.raises(KeyboardInterrupt):
        with output_files.replaced_output(path) as f:
            f.write("half of the")
            raise KeyboardInterrupt  # Ctrl-C, or a kill, mid-write
    assert path.read_text() == "the earlier report" and os.listdir(tmp_path) == ["metrics.json"]
    with output_files.replaced_output(path) as f:
        f.write("the new report")
    assert path.read_text() == "the new report" and os.listdir(tmp_path) == ["metrics.json"]
    # A link at the name is refused naming it, as open_output refuses it (the rename would hide it).
    os.unlink(path)
    os.symlink(tmp_path / "elsewhere", path)
    with pytest.raises(output_files.UnsafeOutputError, match=f"^{path}: is a symbolic link"):
        with output_files.replaced_output(path) as f:
            f.write("x")
    assert not os.path.exists(tmp_path / "elsewhere") and not os.path.exists(f"{path}.tmp")


def test_effnet_evals_predictions_stopped_part_way_keep_the_earlier_csv(tmp_path, monkeypatch):
    # Before: predictions.csv was truncated first, so a kill mid-write lost the earlier run's rows.
    path = str(tmp_path / "predictions.csv")
    with open(path, "w") as f:
        f.write("index,file,label,prob_pneumonia,prob_uncalibrated\n0,a.png,1,0.9,0.9\n")
    before = open(path).read()
    calls = []

    def fail_on_the_third(name):
        calls.append(name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return name

    monkeypatch.setattr(evaluation, "printable_line", fail_on_the_third)
    result = types.SimpleNamespace(index=np.arange(5), labels=np.array([0, 1, 0, 1, 1]), probs=np.full(5, 0.5))
    with pytest.raises(KeyboardInterrupt):
        evaluation._write_predictions(path, result, np.full(5, 0.5), [f"f{i}.png" for i in range(5)])
    assert open(path).read() == before and os.listdir(tmp_path) == ["predictions.csv"]
