"""Hostile inputs, round 5: `effnet-results record` on a downloaded run, JPEG scans, TIFF strips, config keys.

Each case is one that failed before the fix it names (a csv.Error, KeyError or TypeError
traceback, a read of /dev/zero or a FIFO that never ended, a NaN written into
results/recipes.jsonl, a decode of minutes or GBs from a file of kB, a petabyte evaluation
batch) and is asserted here as the documented behaviour (docs/untrusted-inputs.md). No model
is trained and nothing is compiled.
"""

import dataclasses
import io
import json
import os
import re
import shutil
import struct

import ml_collections
import pytest
from helpers import stand_in_run, tiny_config
from PIL import Image

from effnet_jax import runs
from effnet_jax.data import imaging
from effnet_jax.runs.layout import Layout

REPORT = {
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


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A run directory as effnet-train leaves it, at step 3, without training (a stand-in state)."""
    metrics = [
        {"step": 3, "split": "validation", "auc": 0.6, "data": "synthetic"},
        {"step": 3, "split": "run", "wall_seconds": 120.0, "machine": "cpu"},
    ]
    return stand_in_run(str(tmp_path_factory.mktemp("base") / "run"), metrics=metrics)


def _downloaded(base_run, tmp_path, report=REPORT, rows=ROWS, folder="external_3"):
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


def _with(section, **values):
    return {**REPORT, "metrics": {**REPORT["metrics"], section: {**REPORT["metrics"][section], **values}}}


def test_a_downloaded_report_records_as_before(base_run, tmp_path):
    record = _record(_downloaded(base_run, tmp_path)[0])
    scored = record["external"]
    assert scored["auc"] == 0.8 and scored["threshold"] == 0.5 and scored["images"] == 40
    assert record["wall_minutes"] == 2.0 and record["validation"] == {"auc": 0.6}


# --- predictions.csv: each row as effnet-eval writes it, the file bounded ---------------------------

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


# --- metrics.json: the numbers a record copies are checked -----------------------------------------


@pytest.mark.parametrize(
    "report, why",
    [
        ({**REPORT, "metrics": {"operating": {}}}, "metrics.operating.auc=None: expected a finite number"),
        ({**REPORT, "metrics": {"operating": "x"}}, "metrics.operating='x': expected a JSON object"),
        ({**REPORT, "metrics": "operating"}, "metrics='operating': expected a JSON object"),
        ({**REPORT, "metrics": 5}, "metrics=5: expected a JSON object"),
        ({k: v for k, v in REPORT.items() if k != "operating_threshold"}, "operating_threshold=None: expected"),
        ({**REPORT, "operating_threshold": "x"}, "operating_threshold='x': expected a finite number"),
        (json.dumps(REPORT).replace('"auc": 0.8', '"auc": NaN'), "metrics.operating.auc=nan: expected"),
        (json.dumps(REPORT).replace('"auc": 0.8', '"auc": 1e309'), "metrics.operating.auc=inf: expected"),
        (_with("operating", ci95={"auc": "ab"}), r"metrics.operating.ci95.auc='ab': expected \[low, high\]"),
        (_with("operating", ci95=[1]), r"metrics.operating.ci95=\[1\]: expected a JSON object"),
        ({**REPORT, "metrics": {**REPORT["metrics"], "threshold_0.5": "yes"}}, "metrics.threshold_0.5='yes'"),
        ({**REPORT, "step": "3"}, "a report of 'external' at step '3', not external_3"),
        ({**REPORT, "tta": {"x": "y" * 10_000}}, r"tta=\{'x': 'yyyyyy.*'\}: expected 'none', its folder's$"),
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
def test_a_report_of_the_wrong_types_is_one_line_naming_the_file_and_key(base_run, tmp_path, report, why):
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


# --- --negative_class and class_names -------------------------------------------------------------


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
    report = {**REPORT, "class_names": class_names}
    workdir, _ = _downloaded(base_run, tmp_path, report=report, rows=_class_rows(20))
    with pytest.raises(ValueError, match=why) as caught:
        _record(workdir, negative_class="NORMAL")
    assert len(str(caught.value)) < 500 and "metrics.json" in str(caught.value)


@pytest.mark.parametrize("bad", ["nan", "-inf", "1.5"])
def test_one_against_rest_probabilities_must_be_in_0_1(base_run, tmp_path, bad):
    # Before: nan reached sklearn ('Input contains NaN', no file named), -inf became a score of inf.
    rows = _class_rows(20, prob=lambda i: bad if i == 3 else "0.5")
    workdir, _ = _downloaded(base_run, tmp_path, rows=rows)
    with pytest.raises(ValueError, match=r"predictions.csv:5: expected 4 fields, a label of \['NORMAL', 'PNEUMONIA'\]"):
        _record(workdir, negative_class="NORMAL")


# --- --tta and --split ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, why",
    [
        ("../x", r"unknown part '../x'"),
        ("crops@nan", r"crop_fraction nan is not in \(0, 1\]"),
        ("crops@1e309", r"crop_fraction inf is not in \(0, 1\]"),
        ("crops@-1", r"crop_fraction -1.0 is not in \(0, 1\]"),
        ("crops@" + "1" * 5000, r"crop_fraction inf is not in \(0, 1\]"),
        ("x" * 1_000_000, r"unknown part 'xxxxx.*xxxxx'"),
    ],
    ids=["dotdot", "nan", "1e309", "negative", "5000-digits", "a-megabyte"],
)
def test_a_bad_tta_spec_is_a_short_line_naming_the_flag(spec, why):
    # Before: 'TTA crop_fraction must be in (0, 1], got nan.' naming no flag; a spec of a MB echoed twice.
    from effnet_jax.inference.tta import parse_tta

    with pytest.raises(ValueError, match=f"^--tta='.*': {why}") as caught:
        parse_tta(spec)
    assert len(str(caught.value)) < 300


def test_record_with_a_bad_tta_spec_is_refused_before_any_file_is_read(base_run, tmp_path):
    workdir, _ = _downloaded(base_run, tmp_path)
    with pytest.raises(ValueError, match=r"^--tta='crops@nan': crop_fraction nan"):
        _record(workdir, tta="crops@nan")


def test_a_split_with_dots_names_a_folder_inside_eval_as_effnet_eval_does(base_run, tmp_path):
    # Before: --split=../../outside read WORKDIR/eval/../../outside_3/metrics.json, outside the run.
    workdir, _ = _downloaded(base_run, tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(f"{workdir}/eval/outside_3/metrics.json: no effnet-eval")):
        _record(workdir, split="../../outside")


# --- images: work a small file declares -----------------------------------------------------------


def _segments(data):
    """``(marker, start, end)`` of a JPEG's marker segments, a scan's coded data included."""
    i, found = 2, []
    while i < len(data):
        marker = data[i + 1]
        if marker == 0xD9:
            return found + [(marker, i, i + 2)]
        end = i + 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        found.append((marker, i, end))
        i = end
    return found


def _many_scans(copies, size=256):
    """A progressive grey JPEG whose last scan (with its Huffman table) is repeated ``copies`` times."""
    out = io.BytesIO()
    Image.new("L", (size, size), 128).save(out, "JPEG", progressive=True)
    data = out.getvalue()
    segments = _segments(data)
    last = max(k for k, s in enumerate(segments) if s[0] == 0xDA)
    start = segments[last - 1][1] if segments[last - 1][0] == 0xC4 else segments[last][1]
    return data[: segments[-1][1]] + data[start : segments[last][2]] * copies + b"\xff\xd9"


def test_a_jpeg_of_hundreds_of_scans_is_refused_before_decoding():
    # Before: decoded: every scan is a pass over the whole image (400 scans of 56 bytes on a flat
    # 4096 x 4096 image: 4.6 s from 88 kB; a MB of them takes minutes).
    with pytest.raises(imaging.ImageBudgetError, match=r"^x.jpeg: a JPEG of 406 scans, over the 64 decoded"):
        imaging.decode_file(_many_scans(400), "x.jpeg")
    assert imaging.decode_file(_many_scans(10), "ok.jpeg").size == (256, 256)  # a few extra scans still decode


def _tiff_strips(n):
    """A 1 x ``n`` grey TIFF of ``n`` one-row strips, every strip the same byte."""
    entries = 9
    data_at = 8 + 2 + entries * 12 + 4
    offsets_at, counts_at = data_at + 1, data_at + 1 + 4 * n
    tags = [(256, 4, 1, 1), (257, 4, 1, n), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1)]
    tags += [(273, 4, n, offsets_at), (277, 3, 1, 1), (278, 4, 1, 1), (279, 4, n, counts_at)]
    ifd = struct.pack("<H", entries) + b"".join(struct.pack("<HHII", *t) for t in tags) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x80" + struct.pack("<I", data_at) * n + b"\x01\x00\x00\x00" * n


def test_a_tiff_of_millions_of_strips_is_refused_before_pillow_lists_them():
    # Before: 2,000,000 one-row strips (16 MB) took 4 s and 650 MB to open, 12 s and 700 MB to decode.
    with pytest.raises(imaging.ImageBudgetError, match=r"^x.tif: a TIFF page of 70,000 StripOffsets, over the 65,536"):
        imaging.decode_file(_tiff_strips(70_000), "x.tif")
    assert imaging.decode_file(_tiff_strips(1000), "ok.tif").size == (1, 1000)


@pytest.mark.parametrize(
    "name, make",
    [
        (
            "frames.gif",
            lambda out: Image.new("L", (8, 8)).save(
                out, "GIF", save_all=True, append_images=[Image.new("L", (8, 8), i % 255) for i in range(2000)]
            ),
        ),
        (
            "pages.tif",
            lambda out: Image.new("L", (8, 8)).save(
                out, "TIFF", save_all=True, append_images=[Image.new("L", (8, 8), i % 255) for i in range(1000)]
            ),
        ),
    ],
    ids=["gif-2000-frames", "tiff-1000-pages"],
)
def test_multi_frame_files_decode_their_first_frame_only(name, make):
    out = io.BytesIO()
    make(out)
    assert imaging.decode_file(out.getvalue(), name).size == (8, 8)


# --- config values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, why",
    [
        ("operating_sensitivity", float("nan"), r"a fraction in \(0, 1\]"),
        ("operating_sensitivity", 5.0, r"a fraction in \(0, 1\]"),
        ("schedule.warmup_epochs", float("nan"), "a finite number >= 0"),
        ("eval_every_epochs", float("nan"), "a finite number >= 0"),
    ],
)
def test_config_keys_that_were_taken_as_nan_are_refused_naming_the_key(key, value, why):
    # Before: accepted; a NaN warmup made every learning rate NaN, a NaN sensitivity failed in evaluation.
    from effnet_jax.train.config import validate_config

    with pytest.raises(ValueError, match=re.escape(f"config.{key}={value!r}: expected ") + why):
        validate_config(tiny_config(**{key: value}))


@pytest.mark.parametrize(
    "overrides, why",
    [
        ({"num_epochs": 1e300, "num_train_steps": 0}, "config.num_epochs=1e+300: "),
        ({"num_train_steps": 10**30}, f"config.num_train_steps={10**30}: "),
    ],
)
def test_a_run_longer_than_its_step_counter_is_refused(overrides, why):
    # Before: 1e300 epochs became a step count no int32 state step can reach.
    from effnet_jax.train.loop import num_steps

    with pytest.raises(ValueError, match=re.escape(why) + r"[\d,]+ steps, more than the 2,147,483,647"):
        num_steps(tiny_config(**overrides), {"num_examples": 64})
    assert num_steps(tiny_config(num_epochs=2.0, num_train_steps=0), {"num_examples": 64}) == (8, 4)


def test_a_downloaded_runs_eval_batch_size_is_held_to_the_budget(base_run):
    # Before: effnet-eval padded every batch to config.eval_batch_size=10**12 (91 s, then a MemoryError).
    from effnet_jax.inference.evaluation import _batch_size

    run = runs.open(base_run, "latest")
    config = ml_collections.ConfigDict(run.config.to_dict())
    config.eval_batch_size = 10**12
    forged = dataclasses.replace(run, config=config)
    with pytest.raises(ValueError, match=r"^config.eval_batch_size=1000000000000: a batch of .* over the decoded-size"):
        _batch_size(forged, None)
    assert _batch_size(forged, 8) == 8  # --batch_size wins
    assert _batch_size(run, None) == run.config.eval_batch_size
