"""Evaluation reports in a downloaded run (eval/<split>_<step>/metrics.json and predictions.csv), and what reads them.

effnet-results record copies a report's numbers into results/*.jsonl; effnet-results --eval and the
model card summarise every report with the metrics log and config; effnet-data rejected reads the
predictions; effnet-sweep scores a point from its report. Each report here is written by hand into
a stand-in run: a field of another type, NaN or a number no float holds, a file of gigabytes, a FIFO
or a link out of the run is one line naming the file (and key or line), never a traceback, a blocked
read or NaN in a record; what the summaries write stays in its cell and in the run
(docs/untrusted-inputs.md).
"""

import contextlib
import io
import json
import logging
import os
import re
import shutil
import threading

import pytest
from absl import flags
from helpers import hand_made_run, run_module, stand_in_run, tiny_config

from effnet_jax import runs, sweep
from effnet_jax.cli import results as results_cli
from effnet_jax.cli.card import write_card_or_warn
from effnet_jax.data import exclusions
from effnet_jax.inference import tta as tta_lib
from effnet_jax.inference.evaluation import output_dir
from effnet_jax.runs.layout import Layout

# --- effnet-results record: the report ------------------------------------------------------------


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A run directory as effnet-train leaves it, at step 3, without training (a stand-in state)."""
    metrics = [
        {"step": 3, "split": "validation", "auc": 0.6, "data": "synthetic"},
        {"step": 3, "split": "run", "wall_seconds": 120.0, "machine": "cpu"},
    ]
    return stand_in_run(str(tmp_path_factory.mktemp("base") / "run"), metrics=metrics)


REPORT_TO_RECORD = {
    "split": "external",
    "step": 3,
    "class_names": ["NORMAL", "PNEUMONIA"],
    "tta": "none",
    "operating_threshold": 0.5,
    "metrics": {
        "operating": {"auc": 0.8, "accuracy": 0.75, "recall": 0.9, "specificity": 0.6},
        "threshold_0.5": {"accuracy": 0.7, "specificity": 0.6},
    },
}
HEADER = "index,file,label,prob_pneumonia,prob_uncalibrated\n"
ROWS = HEADER + "".join(f"{i},f{i}.png,{i % 2},{0.2 + 0.6 * (i % 2) + 0.01 * (i % 7):.6f},0.5\n" for i in range(40))


def _downloaded(base_run, tmp_path, report=REPORT_TO_RECORD, rows=ROWS, folder="external_3"):
    """``(workdir, eval folder)``: a copy of the run holding ``report`` and ``rows`` (str or bytes; None: no file)."""
    workdir = str(tmp_path / "run")
    shutil.copytree(base_run, workdir, symlinks=True)
    out = os.path.join(workdir, "eval", folder)
    os.makedirs(out)
    if report is not None:
        with open(os.path.join(out, "metrics.json"), "w") as f:
            f.write(report if isinstance(report, str) else json.dumps(report))
    if rows is not None:
        with open(os.path.join(out, "predictions.csv"), "wb") as f:
            f.write(rows if isinstance(rows, bytes) else rows.encode())
    return workdir, out


def _record(workdir, **kwargs):
    from effnet_jax.reporting import recipe_record

    provenance = recipe_record.Provenance(config="c.py", command="cmd", commit="abc", machine="cpu")
    args = dict(record_id="r", name="n", kept="no", tables=("tried",), provenance=provenance, **kwargs)
    return recipe_record.recipe_record(runs.open(workdir, "latest"), **args)


def test_a_downloaded_report_records_as_before(base_run, tmp_path):
    record = _record(_downloaded(base_run, tmp_path)[0])
    scored = record["external"]
    assert scored["auc"] == 0.8 and scored["threshold"] == 0.5 and scored["images"] == 40
    assert record["wall_minutes"] == 2.0 and record["validation"] == {"auc": 0.6}


def _report_with(section, **values):
    return {
        **REPORT_TO_RECORD,
        "metrics": {**REPORT_TO_RECORD["metrics"], section: {**REPORT_TO_RECORD["metrics"][section], **values}},
    }


@pytest.mark.parametrize(
    "report, why",
    [
        ({**REPORT_TO_RECORD, "metrics": {"operating": {}}}, "metrics.operating.auc=None: expected a finite number"),
        ({**REPORT_TO_RECORD, "metrics": {"operating": "x"}}, "metrics.operating='x': expected a JSON object"),
        ({**REPORT_TO_RECORD, "metrics": "operating"}, "metrics='operating': expected a JSON object"),
        ({**REPORT_TO_RECORD, "metrics": 5}, "metrics=5: expected a JSON object"),
        (
            {k: v for k, v in REPORT_TO_RECORD.items() if k != "operating_threshold"},
            "operating_threshold=None: expected",
        ),
        ({**REPORT_TO_RECORD, "operating_threshold": "x"}, "operating_threshold='x': expected a finite number"),
        (json.dumps(REPORT_TO_RECORD).replace('"auc": 0.8', '"auc": NaN'), "metrics.operating.auc=nan: expected"),
        (json.dumps(REPORT_TO_RECORD).replace('"auc": 0.8', '"auc": 1e309'), "metrics.operating.auc=inf: expected"),
        (_report_with("operating", ci95={"auc": "ab"}), r"metrics.operating.ci95.auc='ab': expected \[low, high\]"),
        (_report_with("operating", ci95=[1]), r"metrics.operating.ci95=\[1\]: expected a JSON object"),
        (
            {**REPORT_TO_RECORD, "metrics": {**REPORT_TO_RECORD["metrics"], "threshold_0.5": "yes"}},
            "metrics.threshold_0.5='yes'",
        ),
        ({**REPORT_TO_RECORD, "step": "3"}, "a report of 'external' at step '3', not external_3"),
        ({**REPORT_TO_RECORD, "tta": {"x": "y" * 10_000}}, r"tta=\{'x': 'yyyyyy.*'\}: expected 'none', its folder's$"),
    ],
    ids=[
        "operating-empty",
        "operating-string",
        "metrics-string",
        "metrics-int",
        "threshold-missing",
        "threshold-string",
        "auc-nan",
        "auc-1e309",
        "ci-string",
        "ci-list",
        "at-half-string",
        "step-string",
        "tta-object",
    ],
)
def test_a_report_of_the_wrong_types_is_refused_by_record_naming_the_file_and_key(base_run, tmp_path, report, why):
    # Before: KeyError, TypeError and AttributeError tracebacks; NaN and inf written into the record
    # (json.dumps writes them as NaN / Infinity, which no JSON reader takes).
    workdir, _ = _downloaded(base_run, tmp_path, report=report)
    path = os.path.join(workdir, "eval/external_3/metrics.json")
    with pytest.raises(ValueError, match=f"^{re.escape(path)}: {why}"):
        _record(workdir)


@pytest.mark.parametrize(
    "line, why",
    [
        ({"step": 3, "split": "run", "wall_seconds": "long"}, "wall_seconds='long': expected a finite number"),
        ('{"step": 3, "split": "run", "wall_seconds": NaN}', "wall_seconds=nan: expected a finite number"),
        ({"step": 3, "split": "validation", "auc": [1]}, r"auc=\[1\]: expected a finite number"),
    ],
    ids=["wall-string", "wall-nan", "auc-list"],
)
def test_metrics_log_values_a_record_copies_must_be_numbers(base_run, tmp_path, line, why):
    # Before: TypeError tracebacks, or NaN in the record.
    workdir, _ = _downloaded(base_run, tmp_path)
    with open(Layout(workdir).metrics, "a") as f:
        f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    with pytest.raises(ValueError, match=f"^{re.escape(Layout(workdir).metrics)}: {why}"):
        _record(workdir)


def test_a_null_validation_auc_the_writer_logs_for_nan_is_left_out(base_run, tmp_path):
    # The loop's writer logs a NaN AUC as null: before, float(None) was a TypeError.
    workdir, _ = _downloaded(base_run, tmp_path)
    with open(Layout(workdir).metrics, "a") as f:
        f.write(json.dumps({"step": 3, "split": "validation", "auc": None}) + "\n")
    assert _record(workdir)["validation"] == {"auc": 0.6}


def _class_rows(n, label=lambda i: "NORMAL" if i % 2 else "PNEUMONIA", prob=lambda i: "0.5"):
    return "index,file,label,prob_NORMAL\n" + "".join(f"{i},a,{label(i)},{prob(i)}\n" for i in range(n))


@pytest.mark.parametrize(
    "class_names, why",
    [
        ([f"c{i}" for i in range(200_000)], r"class_names: 200000 class\(es\) \['c0', 'c1', .*\.\.\.\]; expected 2"),
        ("NORMAL", "class_names='NORMAL': expected a list of class names"),
        (5, "class_names=5: expected a list of class names"),
        (["NORMAL", "../x"], "class_names: name '../x' is not allowed"),
    ],
    ids=["200k-classes", "string", "int", "unsafe-name"],
)
def test_a_report_with_absurd_class_names_is_refused_in_a_short_line(base_run, tmp_path, class_names, why):
    # Before: a list of 200,000 names was searched once per row (and printed whole in the error);
    # the string 'NORMAL' matched --negative_class=NORM as a substring; 5 was a TypeError.
    report = {**REPORT_TO_RECORD, "class_names": class_names}
    workdir, _ = _downloaded(base_run, tmp_path, report=report, rows=_class_rows(20))
    with pytest.raises(ValueError, match=why) as caught:
        _record(workdir, negative_class="NORMAL")
    assert len(str(caught.value)) < 500 and "metrics.json" in str(caught.value)


def test_record_with_a_bad_tta_spec_is_refused_before_any_file_is_read(base_run, tmp_path):
    workdir, _ = _downloaded(base_run, tmp_path)
    with pytest.raises(ValueError, match=r"^--tta='crops@nan': crop_fraction nan"):
        _record(workdir, tta="crops@nan")


def test_a_split_with_dots_names_a_folder_inside_eval_as_effnet_eval_does(base_run, tmp_path):
    # Before: --split=../../outside read WORKDIR/eval/../../outside_3/metrics.json, outside the run.
    workdir, _ = _downloaded(base_run, tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(f"{workdir}/eval/outside_3/metrics.json: no effnet-eval")):
        _record(workdir, split="../../outside")


def test_record_refuses_an_integer_no_float_holds_naming_the_key():
    # Before: math.isfinite(10**400) raised OverflowError: a traceback from `effnet-results record`.
    from effnet_jax.runs.values import number

    with pytest.raises(ValueError, match=r"^m.json: metrics.operating.auc=1000.*0: expected a finite number$"):
        number(10**400, "m.json: metrics.operating.auc")
    assert number(3, "x") == 3.0


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


# --- effnet-results record: predictions.csv -------------------------------------------------------


CSV = r"eval/external_3/predictions.csv"


@pytest.mark.parametrize(
    "rows, why",
    [
        (HEADER + "0," + "x" * 200_000 + ",1,0.5,0.5\n", r":2: not CSV as effnet-eval writes it \(field larger"),
        (ROWS.encode() + b"40,\xff\xfe.png,1,0.5,0.5\n", ":42: not UTF-8 text"),
        (ROWS + "40,a,1,nan,0.5\n", ":42: expected 5 fields, a label of .* and a probability in \\[0, 1\\]"),
        (ROWS + "40,a,1,inf,0.5\n", ":42: expected 5 fields"),
        (ROWS + "40,a,1,2.5,0.5\n", ":42: expected 5 fields"),
        (ROWS + "40,a,7,0.5,0.5\n", ":42: expected 5 fields, a label of \\['0', '1'\\]"),
        (ROWS + "40,a,0_1,0.5,0.5\n", ":42: expected 5 fields"),  # int('0_1') is 1
        (ROWS + "40,a,1\n", ":42: expected 5 fields"),
        ("label\n" + "1\n" * 4, ":1: header \\['label'\\]: expected effnet-eval's columns"),
        ("label,prob_pneumonia," + ",".join(f"c{i}" for i in range(500)) + "\n", ":1: header .*at most 104"),
        (HEADER, ": 0 negative and 0 positive rows; a record needs at least 2 of each"),
        (HEADER + "".join(f"{i},a,1,0.7,0.7\n" for i in range(10)), ": 0 negative and 10 positive rows"),
    ],
    ids=[
        "huge-field",
        "not-utf8",
        "nan",
        "inf",
        "over-one",
        "label-7",
        "label-underscore",
        "short-row",
        "no-probability-column",
        "500-columns",
        "no-rows",
        "one-class",
    ],
)
def test_a_malformed_predictions_csv_is_one_line_naming_the_file_and_line(base_run, tmp_path, rows, why):
    # Before: csv.Error and UnicodeDecodeError tracebacks; NaN and label 7 as sklearn's errors naming no file;
    # inf, 2.5 and '0_1' recorded as if they were probabilities and labels.
    workdir, _ = _downloaded(base_run, tmp_path, rows=rows)
    with pytest.raises(ValueError, match=f"^{re.escape(os.path.join(workdir, CSV))}{why}"):
        _record(workdir)


@pytest.mark.parametrize("bad", ["nan", "-inf", "1.5"])
def test_one_against_rest_probabilities_must_be_in_0_1(base_run, tmp_path, bad):
    # Before: nan reached sklearn ('Input contains NaN', no file named), -inf became a score of inf.
    rows = _class_rows(20, prob=lambda i: bad if i == 3 else "0.5")
    workdir, _ = _downloaded(base_run, tmp_path, rows=rows)
    with pytest.raises(ValueError, match=r"predictions.csv:5: expected 4 fields, a label of \['NORMAL', 'PNEUMONIA'\]"):
        _record(workdir, negative_class="NORMAL")


def test_a_sparse_predictions_csv_of_gigabytes_is_refused_from_its_size(base_run, tmp_path):
    # Before: read whole (MemoryError, or the OOM killer, from a sparse file that costs nothing).
    workdir, out = _downloaded(base_run, tmp_path)
    with open(os.path.join(out, "predictions.csv"), "r+b") as f:
        f.truncate(3 << 30)
    with pytest.raises(ValueError, match=r"predictions.csv: 3,221,225,472 bytes, larger than the 16,777,216"):
        _record(workdir)


@pytest.mark.parametrize("target", ["/dev/zero", "outside"], ids=["dev-zero", "outside-the-run"])
def test_a_predictions_csv_linked_out_of_the_run_is_not_read(base_run, tmp_path, target):
    # Before: followed; /dev/zero was read until memory ran out.
    workdir, out = _downloaded(base_run, tmp_path, rows=None)
    if target == "outside":
        target = str(tmp_path / "elsewhere.csv")
        with open(target, "w") as f:
            f.write(ROWS)
    os.symlink(target, os.path.join(out, "predictions.csv"))
    with pytest.raises(ValueError, match=f"predictions.csv: a link to {target}, outside the run"):
        _record(workdir)


def test_a_predictions_fifo_is_refused_without_blocking(base_run, tmp_path):
    # Before: open() blocked forever.
    workdir, out = _downloaded(base_run, tmp_path, rows=None)
    os.mkfifo(os.path.join(out, "predictions.csv"))
    with pytest.raises(ValueError, match="predictions.csv: not a regular file"):
        _record(workdir)


# --- effnet-results --eval and the model card: the report -----------------------------------------


CONFIG = {
    "model": {"name": "tf_efficientnet_lite0"},
    "image_size": 64,
    "seed": 0,
    "loss": "softmax_ce",
    "num_epochs": 2.0,
    "num_train_steps": -1,
    "freeze": [],
    "freeze_until": "",
    "optimizer": {"learning_rate": 1e-3},
    "data": {"name": "chest_xray", "external": ["/x"], "augment": {"enabled": True, "rotation": 10.0}},
}
RUN = {"image_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3, "train_class_counts": [10, 30]}


def _entry(auc=0.9):
    return {
        "n": 40,
        "threshold": 0.5,
        "accuracy": 0.8,
        "auc": auc,
        "precision": 0.8,
        "recall": 0.9,
        "specificity": 0.7,
        "f1": 0.85,
        "brier": 0.1,
        "ece": 0.05,
        "ci95": {"auc": [0.8, 0.95], "accuracy": [0.7, 0.9], "resamples": 200},
    }


REPORT = {
    "split": "external",
    "step": 3,
    "model": "tf_efficientnet_lite0",
    "image_size": 64,
    "tta": "none",
    "class_counts": [20, 20],
    "class_names": ["NORMAL", "PNEUMONIA"],
    "temperature": 1.0,
    "seconds": 3.0,
    "uncalibrated": {"brier": 0.1, "ece": 0.1},
    "metrics": {"operating": _entry(), "threshold_0.5": _entry()},
}
LINES = [
    {"step": 3, "split": "validation", "auc": 0.6, "accuracy": 0.7, "data": "synthetic"},
    {"step": 3, "split": "external", "auc": 0.5, "data": "synthetic"},
    {"step": 3, "split": "run", "wall_seconds": 120.0, "machine": "cpu"},
]
METRICS_JSON = "eval/external_3/metrics.json"


def _run(tmp_path, config=CONFIG, report=REPORT, lines=LINES):
    """A run directory as effnet-train and effnet-eval leave it (no checkpoints: these readers need none)."""
    workdir = tmp_path / "run"
    (workdir / "eval" / "external_3").mkdir(parents=True)
    text = lambda v: v if isinstance(v, str) else json.dumps(v)  # noqa: E731
    (workdir / "config.json").write_text(text(config))
    (workdir / "run.json").write_text(json.dumps(RUN))
    (workdir / "metrics.jsonl").write_text("".join(text(line) + "\n" for line in lines))
    if report is not None:
        (workdir / METRICS_JSON).write_text(text(report))
    return str(workdir)


FLAGS = flags.FLAGS
results_cli.define_flags()


def _results(workdir, fmt="markdown"):
    """``effnet-results WORKDIR --eval``, in this process: (exit status, stdout, stderr)."""
    FLAGS(["effnet-results", "--eval", f"--format={fmt}"])
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = results_cli.main(["effnet-results", workdir])
    finally:
        FLAGS.unparse_flags()
    return code, out.getvalue(), err.getvalue()


def _card(workdir):
    """``write_card_or_warn`` as effnet-eval calls it: (card path or None, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        path = write_card_or_warn(workdir, "effnet-eval")
    return path, err.getvalue()


def test_a_downloaded_run_summarises_and_gets_its_card(tmp_path):
    workdir = _run(tmp_path)
    code, out, err = _results(workdir)
    assert code == 0 and err == "" and len(out.splitlines()) == 2 + 3
    card, warning = _card(workdir)
    assert warning == "" and "| external | 3 | operating |" in open(card).read()


def _refused_by_both(workdir, where, why):
    """effnet-results exits 1 and the card is a warning, each one line naming ``where`` (a file) and ``why``."""
    path = os.path.join(workdir, where)
    code, out, err = _results(workdir)
    assert (code, out) == (1, "")
    assert re.fullmatch(f"effnet-results: error: {re.escape(path)}: {why}[^\n]*\n", err), err
    card, warning = _card(workdir)
    assert card is None and warning.count("\n") == 1 and re.search(f"{re.escape(where)}: {why}", warning), warning
    assert not os.path.exists(os.path.join(workdir, "MODEL_CARD.md"))


def _with(**values):
    return {**REPORT, "metrics": {**REPORT["metrics"], "operating": {**_entry(), **values}}}


@pytest.mark.parametrize(
    "report, why",
    [
        ({**REPORT, "metrics": "x"}, "metrics='x': expected a JSON object"),  # F: AttributeError
        ({**REPORT, "metrics": {"operating": [1]}}, r"metrics.operating=\[1\]: expected a JSON object"),  # F
        (_with(auc="high"), "metrics.operating.auc='high': expected a finite number"),  # F: ValueError traceback
        (json.dumps(_with()).replace('"auc": 0.9', '"auc": NaN', 1), "metrics.operating.auc=nan: expected"),  # F
        (json.dumps(_with()).replace('"auc": 0.9', '"auc": Infinity', 1), "metrics.operating.auc=inf: expected"),
        (json.dumps(_with()).replace('"auc": 0.9', '"auc": 1' + "0" * 400, 1), r"metrics.operating.auc=1000.*0: "),
        (_with(auc=[1, 2]), r"metrics.operating.auc=\[1, 2\]: expected a finite number"),  # F: TypeError traceback
        (_with(threshold="x"), "metrics.operating.threshold='x': expected a finite number"),  # F: no file named
        (_with(n={"a": 1}), r"metrics.operating.n=\{'a': 1\}: expected a finite number"),
        (_with(ci95="x"), "metrics.operating.ci95='x': expected a JSON object"),  # F: AttributeError
        (_with(ci95={"auc": [1]}), r"metrics.operating.ci95.auc=\[1\]: expected \[low, high\]"),  # F: IndexError
        (_with(ci95={"auc": ["a", "b"]}), r"metrics.operating.ci95.auc=\['a', 'b'\]: expected \[low, high\]"),
        (_with(ci95={"resamples": [1]}), r"metrics.operating.ci95.resamples=\[1\]: expected an integer >= 0"),
        ({**REPORT, "split": ["a"]}, r"split=\['a'\]: expected a string"),  # F: card TypeError (unhashable)
        ({**REPORT, "step": "3"}, "step='3': expected an integer >= 0"),
        ({**REPORT, "step": 1e300}, "step=1e\\+300: expected an integer >= 0"),
        ({**REPORT, "model": {"a": 1}}, r"model=\{'a': 1\}: expected a string"),
        ({**REPORT, "image_size": "x"}, "image_size='x': expected an integer >= 0"),
        ({**REPORT, "tta": {"a": 1}}, r"tta=\{'a': 1\}: expected a string"),
        ({**REPORT, "seconds": "x"}, "seconds='x': expected a finite number"),  # F: TypeError traceback
        ({**REPORT, "class_counts": "ab"}, "class_counts='ab': expected a list"),  # F: card TypeError
        ({**REPORT, "class_counts": [1, "a"]}, r"class_counts\[1\]='a': expected an integer >= 0"),
        ({**REPORT, "temperature": "x"}, "temperature='x': expected a finite number"),
        ({**REPORT, "validation_threshold": "x"}, "validation_threshold='x': expected a finite number"),
        ({**REPORT, "uncalibrated": "x"}, "uncalibrated='x': expected a JSON object"),  # F: card AttributeError
        ({**REPORT, "metrics": {"argmax": "x"}}, "metrics.argmax='x': expected a JSON object"),
        ({**REPORT, "metrics": {"argmax": {"per_class": [1], "macro": {}}}}, r"metrics.argmax.per_class=\[1\]: "),
        ({**REPORT, "metrics": {"argmax": {"per_class": {}}}}, "metrics.argmax.macro=None: expected a JSON object"),
        (
            {**REPORT, "metrics": {"argmax": {"per_class": {"a": "x"}, "macro": {}}}},
            "metrics.argmax.per_class.a='x': expected a JSON object",  # F: card AttributeError
        ),
        ("[" * 40 + "]" * 40, "JSON nested deeper than 32 levels"),  # P
        ("{x", r"not valid JSON \(Expecting property name"),  # P
    ],
    ids=[
        "metrics-string",
        "operating-list",
        "auc-string",
        "auc-nan",
        "auc-infinity",
        "auc-400-digits",
        "auc-list",
        "threshold-string",
        "n-object",
        "ci-string",
        "ci-one-bound",
        "ci-strings",
        "resamples-list",
        "split-list",
        "step-string",
        "step-1e300",
        "model-object",
        "image-size-string",
        "tta-object",
        "seconds-string",
        "class-counts-string",
        "class-counts-mixed",
        "temperature-string",
        "validation-threshold-string",
        "uncalibrated-string",
        "argmax-string",
        "argmax-per-class-list",
        "argmax-no-macro",
        "argmax-class-string",
        "nested-40",
        "not-json",
    ],
)
def test_a_report_of_the_wrong_types_is_one_line_naming_the_file_and_key(tmp_path, report, why):
    _refused_by_both(_run(tmp_path, report=report), METRICS_JSON, why)


@pytest.mark.parametrize("key", ["split", "step"])
def test_a_report_without_split_or_step_has_no_row_and_a_card_that_shows_it_unknown(tmp_path, key):
    # Before: KeyError naming only the run.
    workdir = _run(tmp_path, report={k: v for k, v in REPORT.items() if k != key})
    code, _, err = _results(workdir)
    path = os.path.join(workdir, METRICS_JSON)
    assert code == 1 and err.startswith(f"effnet-results: error: {path}: {key}=None: expected ")
    card, warning = _card(workdir)
    assert warning == "" and ("| ? | 3 |" if key == "split" else "| external | None |") in open(card).read()


def test_a_report_read_only_for_its_stored_threshold_needs_no_metrics(tmp_path):
    # effnet-predict --threshold=youden reads eval/<split>_<step>/metrics.json for the threshold alone.
    from effnet_jax.inference.thresholds import find_validation_threshold

    workdir = _run(tmp_path, report={"step": 3, "validation_threshold": 0.42})
    value, path = find_validation_threshold(hand_made_run(workdir, CONFIG, step=3))
    assert value == 0.42 and path.endswith("metrics.json")


def test_a_report_without_a_model_name_shows_none(tmp_path):
    # Before: KeyError 'model' (reports of older effnet-eval versions, or hand-made ones).
    workdir = _run(tmp_path, report={k: v for k, v in REPORT.items() if k != "model"})
    code, out, _ = _results(workdir)
    assert code == 0 and "| , 64 |" in out


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


@pytest.mark.parametrize(
    "name, text",
    [
        ("config.json", '{"model": {"name": NaN}, "compilation_cache_dir": NaN}'),
        ("eval/validation_3/metrics.json", '{"split": 5, "step": "x", "metrics": [1], "thresholds": "y"}'),
    ],
    ids=["config-nan-names", "eval-report-types"],
)
def test_effnet_results_on_values_of_another_type_is_one_line(run_copy, name, text):
    _write(os.path.join(run_copy, name), text)
    result = run_module("effnet_jax.cli.results", run_copy, "--eval")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"effnet-results: error: {run_copy}" in result.stderr


# --- effnet-results --eval and the model card: metrics.jsonl and config.json ----------------------


@pytest.mark.parametrize(
    "line, why",
    [
        ({"step": 3, "split": "run", "wall_seconds": "x"}, "wall_seconds='x': expected a finite number"),
        ('{"step": 3, "split": "run", "wall_seconds": NaN}', "wall_seconds=nan: expected a finite number"),
        ('{"step": 3, "split": "run", "wall_seconds": 1' + "0" * 400 + "}", "wall_seconds=1000.*: expected"),
        ({"split": "validation", "auc": 0.5}, "step=None: expected an integer >= 0"),
    ],
    ids=["wall-string", "wall-nan", "wall-400-digits", "validation-without-step"],
)
def test_a_metrics_log_value_the_table_sums_is_one_line_naming_the_key(tmp_path, line, why):
    # Before: TypeError / KeyError naming only the run, an OverflowError traceback, or 'nan min' in the table.
    workdir = _run(tmp_path, lines=LINES + [line])
    code, out, err = _results(workdir)
    path = os.path.join(workdir, "metrics.jsonl")
    assert code == 1 and re.fullmatch(f"effnet-results: error: {re.escape(path)}: {why}[^\n]*\n", err), err


@pytest.mark.parametrize(
    "line",
    [
        {"step": 3, "split": "validation", "auc": "inf"},  # the loop logs an infinity as "inf"
        {"step": 3, "split": "validation", "auc": {"a": 1}},
        '{"step": 3, "split": "validation", "auc": NaN, "threshold": "x"}',
        {"step": 3, "split": "validation", "auc": None},  # the loop logs NaN as null
    ],
    ids=["inf-string", "object", "nan-and-threshold-string", "null"],
)
def test_a_metrics_log_value_shown_that_is_not_a_number_is_unknown(tmp_path, line):
    # Before: ValueError / TypeError tracebacks (format code 'f' for a str or dict), or 'could not convert'.
    workdir = _run(tmp_path, lines=LINES + [line])
    code, out, err = _results(workdir)
    assert (code, err) == (0, "")
    assert out.splitlines()[2].split(" | ")[6] == ""  # the AUC cell
    card, warning = _card(workdir)
    assert warning == "" and card is not None


@pytest.mark.parametrize(
    "line",
    [{"step": 3, "split": "run", "wall_seconds": None}, {"step": 3, "split": "run", "machine": ["x", "|"]}],
    ids=["wall-null", "machine-list"],
)
def test_run_lines_without_wall_time_or_with_an_odd_machine_still_summarise(tmp_path, line):
    # Before: TypeError (None + float); a list machine crashed the table (str.join) with a traceback.
    code, out, err = _results(_run(tmp_path, lines=LINES + [line]))
    assert (code, err) == (0, "") and len(out.splitlines()) == 5


def _config(**values):
    return {**CONFIG, **values}


def _data(**values):
    return _config(data={**CONFIG["data"], **values})


@pytest.mark.parametrize(
    "config, why",
    [
        (_config(model="x"), "model='x': expected a JSON object"),  # F: card AttributeError traceback
        (_config(model={"name": {"a": 1}}), r"model.name=\{'a': 1\}: expected a string"),
        (_config(num_train_steps="x"), "num_train_steps='x': expected a finite number"),
        (_config(num_epochs="x"), "num_epochs='x': expected a finite number"),  # F: no file or key named
        (_config(data="x"), "data='x': expected a JSON object"),  # F: card AttributeError traceback
        (_data(augment="x"), "data.augment='x': expected a JSON object"),
        (_data(augment={"rotation": "x"}), "data.augment.rotation='x': expected a finite number"),
        (_config(optimizer="x"), "optimizer='x': expected a JSON object"),
        (_config(optimizer={"learning_rate": "x"}), "optimizer.learning_rate='x': expected a finite number"),
        (_config(label_smoothing=[1]), r"label_smoothing=\[1\]: expected a finite number"),
        (_config(freeze=5), "freeze=5: expected a list"),
        (_data(split_protocol="pooled", pooled_fractions="ab"), "data.pooled_fractions='ab': expected a list"),
    ],
    ids=[
        "model-string",
        "model-name-object",
        "steps-string",
        "epochs-string",
        "data-string",
        "augment-string",
        "rotation-string",
        "optimizer-string",
        "lr-string",
        "label-smoothing-list",
        "freeze-int",
        "pooled-string",
    ],
)
def test_a_config_value_shown_of_the_wrong_type_is_one_line_naming_the_key(tmp_path, config, why):
    workdir = _run(tmp_path, config=config)
    code, out, err = _results(workdir)
    path = os.path.join(workdir, "config.json")
    assert code == 1 and re.fullmatch(f"effnet-results: error: {re.escape(path)}: {why}[^\n]*\n", err), err
    card, warning = _card(workdir)
    assert card is None and warning.count("\n") == 1 and re.search(f"config.json: {why}", warning), warning


@pytest.mark.parametrize(
    "config, why",
    [
        (_data(class_names="NORMAL"), "data.class_names='NORMAL': expected a list"),  # before: 6 classes N,O,R,...
        (_data(class_names=[1, 2]), "data.class_names: name 1 is not allowed"),  # F: TypeError
        (_data(external=5), "data.external=5: expected a list"),  # F: TypeError
        (_config(soup={"members": 5}), "soup.members=5: expected a list"),  # F: TypeError
    ],
    ids=["class-names-string", "class-names-ints", "external-int", "soup-members-int"],
)
def test_a_config_value_only_the_card_reads_is_a_warning_naming_the_key(tmp_path, config, why):
    card, warning = _card(_run(tmp_path, config=config))
    assert card is None and warning.count("\n") == 1 and f"config.json: {why}" in warning, warning


def test_a_config_key_configdict_refuses_names_the_file(tmp_path):
    # Before: "ConfigDict does not accept dots in field names", naming no file.
    workdir = _run(tmp_path, config=_config(**{"a.b": 1}))
    code, _, err = _results(workdir)
    assert code == 1 and err.startswith(f"effnet-results: error: {workdir}/config.json: ConfigDict does not accept")


# --- what the summaries write ---------------------------------------------------------------------


def test_json_output_writes_no_nan(tmp_path):
    # Before: a report of more than two classes has no threshold: json.dumps wrote NaN, which no JSON reader takes.
    argmax = {"per_class": {"A": {"auc": 0.9}, "B": {"auc": 0.8}, "C": {"auc": 0.7}}, "macro": {"auc": 0.8}, "n": 9}
    workdir = _run(tmp_path, report={**REPORT, "metrics": {"argmax": argmax}})
    code, out, _ = _results(workdir, fmt="json")
    rows = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in the JSON output"))
    assert code == 0 and rows[1]["threshold"] is None


def test_a_split_or_machine_with_pipes_and_line_breaks_stays_in_its_cell(tmp_path):
    workdir = _run(tmp_path, report={**REPORT, "split": "a|b\n| x | y |\nc"})
    lines = LINES[:2] + [{"step": 3, "split": "run", "wall_seconds": 1.0, "machine": "m\n|---|"}]
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines))
    code, out, _ = _results(workdir)
    assert code == 0 and len(out.splitlines()) == 2 + 3
    assert all(line.count(" | ") == out.splitlines()[0].count(" | ") for line in out.splitlines()[2:])


def test_the_card_is_never_written_through_a_link_or_outside_the_run(tmp_path):
    workdir = _run(tmp_path)
    outside = tmp_path / "outside.md"
    outside.write_text("mine")
    os.symlink(outside, os.path.join(workdir, "MODEL_CARD.md"))
    card, warning = _card(workdir)
    # Refused, as effnet-train refuses it (runs.layout.WRITTEN_FILES): before, the link was replaced silently.
    assert card is None and "MODEL_CARD.md: is a symbolic link; refusing to write through it" in warning
    assert outside.read_text() == "mine" and os.path.islink(os.path.join(workdir, "MODEL_CARD.md"))
    os.unlink(os.path.join(workdir, "MODEL_CARD.md"))
    os.symlink(outside, os.path.join(workdir, "MODEL_CARD.md.tmp"))
    card, warning = _card(workdir)
    assert card is None and "MODEL_CARD.md.tmp: is a symbolic link; refusing to write through it" in warning
    assert outside.read_text() == "mine"


# --- links, FIFOs and sizes -----------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/dev/zero", "outside"], ids=["dev-zero", "outside-the-run"])
def test_a_report_linked_out_of_the_run_is_not_read(tmp_path, target):  # P
    workdir = _run(tmp_path, report=None)
    if target == "outside":
        target = str(tmp_path / "elsewhere.json")
        with open(target, "w") as f:
            json.dump(REPORT, f)
    os.symlink(target, os.path.join(workdir, METRICS_JSON))
    _refused_by_both(workdir, METRICS_JSON, f"a link to {re.escape(target)}, outside the run")


def test_an_eval_folder_linked_out_of_the_run_is_not_read(tmp_path):  # P
    workdir = _run(tmp_path, report=None)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "x_3").mkdir(parents=True)
    (elsewhere / "x_3" / "metrics.json").write_text(json.dumps(REPORT))
    os.rmdir(os.path.join(workdir, "eval", "external_3"))
    os.rmdir(os.path.join(workdir, "eval"))
    os.symlink(elsewhere, os.path.join(workdir, "eval"))
    code, _, err = _results(workdir)
    assert code == 1 and "x_3/metrics.json: a link to" in err and "outside the run" in err


def _no_hang(call, *args):
    """``call(*args)``, failing the test when it has not returned within 10 s (a read blocked on a FIFO)."""
    done = []

    def target():
        try:
            done.append((call(*args), None))
        except Exception as e:  # raised in this thread, after the join
            done.append((None, e))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(10)
    assert done, f"{call.__name__} did not return: blocked"
    if done[0][1] is not None:
        raise done[0][1]
    return done[0][0]


def test_a_report_fifo_is_refused_without_blocking(tmp_path):  # P
    workdir = _run(tmp_path, report=None)
    os.mkfifo(os.path.join(workdir, METRICS_JSON))
    code, _, err = _no_hang(_results, workdir)
    assert code == 1 and "metrics.json: not a regular file (a FIFO, device or folder)" in err


def test_a_metrics_log_fifo_is_refused_without_blocking(tmp_path):
    # Before: metrics.jsonl was sized with stat (0 bytes) and read: blocked forever.
    workdir = _run(tmp_path)
    os.remove(os.path.join(workdir, "metrics.jsonl"))
    os.mkfifo(os.path.join(workdir, "metrics.jsonl"))
    code, _, err = _no_hang(_results, workdir)
    assert code == 1 and "metrics.jsonl: not a regular file (a FIFO, device or folder)" in err
    card, warning = _no_hang(_card, workdir)
    assert card is None and "metrics.jsonl: not a regular file" in warning


def test_a_sparse_report_of_gigabytes_is_refused_from_its_size(tmp_path):  # P
    workdir = _run(tmp_path)
    with open(os.path.join(workdir, METRICS_JSON), "r+b") as f:
        f.truncate(3 << 30)
    _refused_by_both(workdir, METRICS_JSON, "3,221,225,472 bytes, over the 16,777,216 a JSON file of effnet_jax may")


def test_an_eval_report_folder_linked_outside_is_not_read(run_copy, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "metrics.json").write_text("{}")
    os.makedirs(os.path.join(run_copy, "eval"))
    os.symlink(outside, os.path.join(run_copy, "eval", "validation_3"))
    run = runs.open(run_copy, None)
    with pytest.raises(ValueError, match="validation_3/metrics.json: a link to .*outside the run"):
        run.eval_reports(strict=True)
    assert run.eval_reports() == []


# --- reports the other readers skip or score ------------------------------------------------------


def test_a_report_the_readers_skip_is_said_naming_it(tmp_path, caplog):
    run = hand_made_run(tmp_path, {"data": {"name": "chest_xray"}})
    good, bad = tmp_path / "eval" / "validation", tmp_path / "eval" / "external_a"
    good.mkdir(parents=True)
    bad.mkdir()
    (good / "metrics.json").write_text(json.dumps({"step": 7, "validation_threshold": 0.4}))
    (bad / "metrics.json").write_text(json.dumps({"step": "seven", "validation_threshold": 0.9}))
    with caplog.at_level(logging.WARNING, logger="effnet_jax.runs.run"):
        found = run.eval_reports()
    assert [os.path.basename(os.path.dirname(p)) for p, _ in found] == ["validation"]
    skipped = [r.getMessage() for r in caplog.records if "skipped an evaluation report" in r.getMessage()]
    assert len(skipped) == 1 and str(bad / "metrics.json") in skipped[0]
    with pytest.raises(ValueError, match="external_a/metrics.json"):
        run.eval_reports(strict=True)


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


# --- effnet-data rejected: the predictions --------------------------------------------------------


def _rejected(tmp_path, rows=None, make=None):
    from effnet_jax.data.eda import rejected

    report = tmp_path / "report"
    report.mkdir()
    path = report / "predictions.csv"
    if make is not None:
        make(str(path))
    else:
        path.write_bytes(rows if isinstance(rows, bytes) else rows.encode())
    return lambda: rejected.read_predictions(report), str(path)


@pytest.mark.parametrize(
    "rows, why",
    [
        (HEADER + "0," + "x" * 200_000 + ",1,0.5,0.5\n", r":2: not CSV as effnet-eval writes it \(field larger"),
        (HEADER.encode() + b"0,\xff.png,1,0.5,0.5\n", ":2: not UTF-8 text"),  # F: UnicodeDecodeError, no file
        (HEADER + "0,a.png,0_1,0.5,0.5\n", r": row 1: label '0_1' / prob '0.5'; expected 0 or 1"),  # F: taken as 1
        (HEADER + "0,a.png, 1,0.5,0.5\n", r": row 1: label ' 1' / prob '0.5'; expected 0 or 1"),  # F: taken as 1
        ("label," * 100_000 + "\n", r": columns \['label', 'label', .*\.\.\.\]; expected file, label"),  # short line
    ],
    ids=["huge-field", "not-utf8", "label-underscore", "label-space", "100k-columns"],
)
def test_a_malformed_predictions_csv_for_rejected_is_one_line_naming_the_file(tmp_path, rows, why):
    read, path = _rejected(tmp_path, rows)
    with pytest.raises(ValueError, match=f"^{re.escape(path)}{why}") as caught:
        read()
    assert len(str(caught.value)) < 500


@pytest.mark.parametrize(
    "make, why",
    [
        (os.mkfifo, "not a regular file"),  # before: 'no such file'
        (lambda p: os.symlink("/dev/zero", p), "not a regular file"),  # before: 'no such file'
        (lambda p: open(p, "wb").truncate(3 << 30), "3,221,225,472 bytes, larger than the 16,777,216"),  # F: csv.Error
    ],
    ids=["fifo", "dev-zero", "sparse-3-gb"],
)
def test_a_predictions_csv_for_rejected_is_read_bounded(tmp_path, make, why):
    read, path = _rejected(tmp_path, make=make)
    with pytest.raises(ValueError, match=f"^{re.escape(path)}: {why}"):
        _no_hang(read)


# --- effnet-data rejected reads back what effnet-eval wrote -----------------------------------------

REJECTED_NAMES = ["-1.jpeg", "=2.jpeg", "a\nb.jpeg", os.fsdecode(b"c\xff.jpeg"), "IM-4.jpeg"]


def test_rejected_finds_the_images_whose_names_effnet_eval_wrote_quoted_or_escaped(tmp_path, capsys):
    # effnet-eval's predictions.csv writes a name as csv_cell(printable_line(name)): "'-1.jpeg",
    # "a\\nb.jpeg", "c\\xff.jpeg". `effnet-data rejected` looked for those very names in train/ and
    # stopped: "'-1.jpeg: not in .../train/NORMAL; were the runs trained on ...?" (exit 2).
    import csv

    from effnet_jax.cli import data as data_cli
    from effnet_jax.output_files import csv_cell, printable_line

    raw = tmp_path / "chest_xray"
    (raw / "train" / "PNEUMONIA").mkdir(parents=True)
    (raw / "train" / "NORMAL").mkdir(parents=True)
    for name in REJECTED_NAMES:
        (raw / "train" / "NORMAL" / name).write_bytes(b"x")
    report = tmp_path / "eval"
    report.mkdir()
    with open(report / "predictions.csv", "w", newline="") as f:  # as effnet-eval writes it
        writer = csv.writer(f)
        writer.writerow(["index", "file", "label", "prob_pneumonia", "prob_uncalibrated"])
        for i, name in enumerate(REJECTED_NAMES):
            writer.writerow([i, csv_cell(printable_line(name)), 0, "0.990000", "0.990000"])
    out = tmp_path / "out"
    argv = ["rejected", f"--data_dir={raw}", f"--reports={report}", f"--out={out}"]
    assert data_cli.main(argv) == 0, capsys.readouterr().err
    expected = {f"train/NORMAL/{name}" for name in REJECTED_NAMES}
    assert set(exclusions.read(out / "exclusions.json")) == expected
    assert expected <= set(exclusions.read(out / "exclusions.csv"))
