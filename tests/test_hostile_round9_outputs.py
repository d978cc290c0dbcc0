"""Hostile inputs, round 9: what the commands write (CHANGELOG.md, docs/untrusted-outputs.md).

File names with control characters stay one escaped line in CSV and on stderr, and the results
files and the .md pages effnet-results writes are never written through a planted link or FIFO.
"""

import contextlib
import csv
import io
import json
import os

import numpy as np
import pytest

from effnet_jax.inference import evaluation
from effnet_jax.inference.prediction_output import PredictionWriter
from effnet_jax.output_files import UnsafeOutputError
from effnet_jax.reporting import recipe_record
from effnet_jax.reporting import results_tables as rt

# A newline, an ANSI colour code, a right-to-left override, a comma and quotes in one file name.
HOSTILE = 'a\nb\x1b[31mred\u202eevil,"q".png'
ESCAPED = 'a\\nb\\x1b[31mred\\u202eevil,"q".png'
WHAT_RAN = {"command": "c", "config": None, "commit": "abc", "machine": "m", "date": "d"}


def _no_control(text: str) -> bool:
    return "\x1b" not in text and "\u202e" not in text


def test_predict_csv_cells_escape_control_characters_as_json_lines_does(tmp_path):
    path = tmp_path / "preds.csv"
    with PredictionWriter(str(path)) as writer:
        writer.write({"file": HOSTILE, "error": f"{HOSTILE}: not an image"})
        writer.write({"file": "=sum.png", "prob_pneumonia": 0.5, "label": "NORMAL", "threshold": 0.5})
    text = path.read_text(encoding="utf-8")
    assert _no_control(text) and len(text.splitlines()) == 3  # the header and one line per row
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["file"] for r in rows] == [ESCAPED, "'=sum.png"]
    assert rows[0]["error"] == f"{ESCAPED}: not an image"


def test_predict_says_an_unreadable_file_on_one_escaped_line(tmp_path, monkeypatch):
    from absl import flags

    from effnet_jax.cli import predict

    monkeypatch.chdir(tmp_path)  # nothing below may write, least of all into the checkout
    predict.define_flags()
    flags.FLAGS(["effnet-predict"])
    # --out is shared with effnet-results (default results/recipes.jsonl) once its flags are defined.
    flags.FLAGS.out = None
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = predict._emit(iter([{"file": HOSTILE, "error": f"{HOSTILE}: not an image"}]))
    finally:
        flags.FLAGS.unparse_flags()
    assert status == predict.EXIT_FAILED
    assert err.getvalue() == f"effnet-predict: cannot read {ESCAPED}: not an image\n"
    assert json.loads(out.getvalue())["file"] == HOSTILE  # JSON lines escapes it itself


@pytest.mark.parametrize("writer", ["binary", "classes"])
def test_eval_predictions_csv_keeps_one_line_per_example(tmp_path, writer):
    result = evaluation.SplitPredictions(labels=np.array([0, 1]), probs=np.array([0.25, 0.75]), index=np.array([0, 1]))
    path = str(tmp_path / "predictions.csv")
    if writer == "binary":
        evaluation._write_predictions(path, result, result.probs, [HOSTILE, "ok.png"])
    else:
        probs = np.array([[0.75, 0.25], [0.25, 0.75]])
        evaluation._write_class_predictions(path, result, probs, [HOSTILE, "ok.png"], ("NORMAL", "PNEUMONIA"))
    text = open(path, encoding="utf-8").read()
    assert _no_control(text) and len(text.splitlines()) == 3
    assert [r["file"] for r in csv.DictReader(io.StringIO(text))] == [ESCAPED, "ok.png"]


def test_a_results_file_that_is_a_link_is_never_appended_through(tmp_path):
    victim = tmp_path / "victim.jsonl"
    victim.write_text("")
    os.symlink(victim, tmp_path / "recipes.jsonl")
    record = {**WHAT_RAN, "id": "r1"}
    with pytest.raises(UnsafeOutputError, match="recipes.jsonl: is a symbolic link"):
        recipe_record.append_new(str(tmp_path / "recipes.jsonl"), record)
    with pytest.raises(UnsafeOutputError, match="recipes.jsonl: is a symbolic link"):
        rt.append_record(str(tmp_path / "recipes.jsonl"), record)
    assert victim.read_text() == ""


def test_a_results_file_that_is_a_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "recipes.jsonl"
    os.mkfifo(fifo)
    record = {**WHAT_RAN, "id": "r1"}
    with pytest.raises(UnsafeOutputError, match="recipes.jsonl: not a regular file"):
        recipe_record.append_new(str(fifo), record)
    with pytest.raises(UnsafeOutputError, match="recipes.jsonl: is a FIFO"):
        rt.append_record(str(fifo), record)


def test_a_torn_results_file_is_one_line_naming_it_and_nothing_is_appended(tmp_path):
    path = tmp_path / "recipes.jsonl"
    path.write_text(json.dumps({**WHAT_RAN, "id": "r0"}) + "\n{torn")
    with pytest.raises(ValueError, match=r"recipes.jsonl:2: not a JSON record"):
        recipe_record.append_new(str(path), {**WHAT_RAN, "id": "r1"})
    assert path.read_text().endswith("{torn")


def test_tables_write_refuses_a_linked_page_before_rewriting_any(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "runs.jsonl").write_text(json.dumps({**WHAT_RAN, "tables": ["t"], "x": 1}) + "\n")
    (results / "tables.json").write_text(
        json.dumps({"t": {"source": "runs", "columns": [{"header": "x", "cell": "{x}"}]}})
    )
    stale = "<!-- results:t -->\n| old |\n<!-- /results:t -->\n"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.md").write_text(stale)
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.md").write_text(stale)
    os.symlink(outside / "victim.md", root / "linked.md")
    with pytest.raises(rt.ResultsError, match="linked.md: is a symbolic link"):
        rt.update_files(root, results, write=True)
    assert (outside / "victim.md").read_text() == stale and (root / "a.md").read_text() == stale
    os.remove(root / "linked.md")
    rt.update_files(root, results, write=True)
    assert "| 1 |" in (root / "a.md").read_text()
