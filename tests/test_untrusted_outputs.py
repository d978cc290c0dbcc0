"""Files our commands write outside a run folder, and how they write them.

effnet-predict's CSV, JSON lines and Grad-CAM images, effnet-eval's predictions, effnet-data's
reports, figures and exclusion lists, effnet-export's and effnet-convert's folders, and
effnet-results' records and pages (run folders: test_untrusted_workdirs.py). Nothing is written
through a link, FIFO or hard link planted at an output's name (or its temporary name); an output
path is checked before any work; a file is replaced whole or not at all; and what file names hold
(control characters, CSV formulas, bytes that are not UTF-8) is escaped where it lands
(docs/untrusted-outputs.md).
"""

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import subprocess
import sys
import types

import cleaning_fixtures as cf
import numpy as np
import pytest
from absl import flags
from data_fixtures import GOOD_TREE, write_tree
from helpers import REPO, hand_made_run, run_module
from PIL import Image

from effnet_jax import limits, output_files, runs, serving
from effnet_jax.cli import data as data_cli
from effnet_jax.cli import results as results_cli
from effnet_jax.data import exclusions
from effnet_jax.inference import evaluation
from effnet_jax.inference import export as export_lib
from effnet_jax.inference import gradcam as gradcam_lib
from effnet_jax.inference.prediction_output import PredictionWriter
from effnet_jax.inference.tta import TTAConfig
from effnet_jax.output_files import UnsafeOutputError, csv_cell, open_output, short_hash, write_text
from effnet_jax.reporting import plots, recipe_record, run_summary
from effnet_jax.reporting import results_tables as rt
from effnet_jax.weights.loading import METADATA_FILE

# --- no write through a link or FIFO; output paths checked before the work ------------------------


def test_no_write_follows_a_link_or_opens_a_fifo(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, tmp_path / "out.csv")
    with pytest.raises(UnsafeOutputError, match=r"out.csv: is a symbolic link; refusing to write through it$"):
        open_output(tmp_path / "out.csv")
    with pytest.raises(UnsafeOutputError, match="is a symbolic link"):
        PredictionWriter(str(tmp_path / "out.csv"))
    os.mkfifo(tmp_path / "fifo.png")
    with pytest.raises(UnsafeOutputError, match="FIFO"):
        open_output(tmp_path / "fifo.png", "wb")
    os.link(victim, tmp_path / "hard.jsonl")
    with pytest.raises(UnsafeOutputError, match="2 hard links"):
        open_output(tmp_path / "hard.jsonl")
    assert victim.read_text() == "keep me"
    # Our own regular file from an earlier run is overwritten.
    (tmp_path / "mine.csv").write_text("old rows, longer than the new ones\n")
    with open_output(tmp_path / "mine.csv") as f:
        f.write("new\n")
    assert (tmp_path / "mine.csv").read_text() == "new\n"


@pytest.mark.parametrize(
    "module,args,flag",
    [
        # Each would fail later for another reason (no weights file, no checkpoints): the output
        # error coming first shows the check runs before any work.
        (
            "effnet_jax.cli.convert",
            ["--variant=efficientnet_lite0", "--input=/nonexistent/w.pth", "--output={bad}"],
            "--output",
        ),
        ("effnet_jax.cli.evaluate", ["--workdir={empty}", "--out_dir={bad}"], "--out_dir"),
        ("effnet_jax.cli.predict", ["--workdir={empty}", "--gradcam={bad}", "{empty}/x.jpeg"], "--gradcam"),
    ],
)
def test_unwritable_output_path_fails_before_any_work(module, args, flag, tmp_path):
    import subprocess
    import sys

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    empty = tmp_path / "run"
    empty.mkdir()
    args = [a.format(bad=blocker / "out", empty=empty) for a in args]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": repo},
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"error: {flag}={blocker / 'out'}: cannot write there (Not a directory)" in proc.stderr


# --- files replaced whole or not at all -----------------------------------------------------------


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


# --- where effnet-eval's reports and effnet-predict's Grad-CAM images go --------------------------


def test_folder_split_outputs_get_a_derived_name_inside_eval(tmp_path):
    workdir = tmp_path / "run"
    eval_dir = os.path.join(os.path.abspath(workdir), "eval")
    escape = evaluation.output_dir(hand_made_run(workdir, {}, step=7), "folder:../../../etc", TTAConfig())
    assert os.path.dirname(escape) == eval_dir
    etc = os.path.realpath(os.path.join(os.getcwd(), "../../../etc"))
    assert os.path.basename(escape) == f"folder-etc-{short_hash(etc)}_7"
    # Two folders of one name stay apart; a link to a folder is that folder.
    (tmp_path / "a" / "ext").mkdir(parents=True)
    (tmp_path / "b" / "ext").mkdir(parents=True)
    os.symlink(tmp_path / "a" / "ext", tmp_path / "link")
    a, b, link = (
        evaluation.output_dir(hand_made_run(workdir, {}, step=7), f"folder:{p}", TTAConfig())
        for p in (tmp_path / "a" / "ext", tmp_path / "b" / "ext", tmp_path / "link")
    )
    assert len({a, b}) == 2 and a == link and all(os.path.dirname(p) == eval_dir for p in (a, b))
    assert evaluation.output_dir(hand_made_run(workdir, {}, step=7), "external_1", TTAConfig()) == os.path.join(
        eval_dir, "external_1_7"
    )


def _write_png(path, seed=0) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 36), dtype=np.uint8)).save(path, format="PNG")
    return str(path)


@pytest.fixture(scope="module")
def predictor(workdir):
    from effnet_jax import runs
    from effnet_jax.inference.prediction import Predictor

    return Predictor(runs.open(workdir, "best"), batch_size=4)


def test_gradcam_names_are_distinct_and_never_written_through_links(predictor, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    inputs = [_write_png(a / "x.png", 1), _write_png(b / "x.png", 2)]
    out = tmp_path / "cams"
    records = list(predictor.predict(inputs, gradcam_dir=str(out)))
    overlays = [r["gradcam"] for r in records]
    assert len(set(overlays)) == 2 and all(os.path.dirname(p) == str(out) for p in overlays)
    assert len(os.listdir(out)) == 4  # two overlays, two panels: none replaced another
    # A link planted at the next run's overlay name: refused, and what it points to is untouched.
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    os.remove(overlays[0])
    os.symlink(victim, overlays[0])
    with pytest.raises(UnsafeOutputError, match=rf"^{overlays[0]}: is a symbolic link"):
        list(predictor.predict(inputs, gradcam_dir=str(out)))
    assert victim.read_bytes() == b"keep"


ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
BAD_NAME = os.fsdecode(b"scan\xff\xfe.png")  # not UTF-8: Python keeps the bytes as surrogates


def test_effnet_predict_with_hostile_names_and_a_linked_out(workdir, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    names = ["=cmd.png", "-2+3.png", "@sum.png"]
    for i, name in enumerate(names):
        _write_png(images / name, i)
    _write_png(os.path.join(os.fsencode(images), os.fsencode(BAD_NAME)), 9)
    os.symlink(tmp_path / "victim.csv", tmp_path / "linked.csv")
    args = [sys.executable, "-m", "effnet_jax.cli.predict", f"--workdir={workdir}"]
    run = dict(cwd=images, capture_output=True, text=True, env=ENV, timeout=300)
    # Named as given (relative to the folder), so each row's file cell starts with the name itself.
    proc = subprocess.run([*args, f"--out={tmp_path / 'linked.csv'}", "--", *names, BAD_NAME], **run)
    assert proc.returncode == 1 and not (tmp_path / "victim.csv").exists()
    assert proc.stderr.strip() == (
        f"effnet-predict: error: --out={tmp_path / 'linked.csv'}: is a symbolic link; refusing to write through it"
    )
    out = tmp_path / "preds.csv"
    proc = subprocess.run([*args, f"--out={out}", "--", *names, BAD_NAME], **run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == ["'=cmd.png", "'-2+3.png", "'@sum.png", "scan\\xff\\xfe.png"]
    assert all(r["label"] in ("NORMAL", "PNEUMONIA") for r in rows)


def test_gradcam_panels_of_stems_holding_the_suffix_never_share_a_name():
    from effnet_jax.inference.prediction import _overlay_names, _panel_name

    paths = ["scans/k.gradcam.png.png", "scans/k.gradcam_panel.png.png", "scans/k.png"]
    overlays = _overlay_names(paths)
    written = overlays + [_panel_name(n) for n in overlays]
    assert len({n.lower() for n in written}) == 6, written


# --- file names in what we write: CSV formulas, control characters, bytes that are not UTF-8 ------


def test_csv_cells_that_start_a_formula_are_neutralised_everywhere(tmp_path):
    assert [csv_cell(v) for v in ("=1+1", "+x", "-y", "@z", "\tq", "\rr", "a=b", 0.25)] == [
        "'=1+1",
        "'+x",
        "'-y",
        "'@z",
        "'\tq",
        "'\rr",
        "a=b",
        0.25,
    ]
    result = evaluation.SplitPredictions(np.array([0, 1]), np.array([0.2, 0.9]), np.array([0, 1]))
    path = evaluation._write_predictions(str(tmp_path / "p.csv"), result, result.probs, ['=HYPERLINK("x")', "ok"])
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert [r[1] for r in rows[1:]] == ['\'=HYPERLINK("x")', "ok"]
    # The exclusion list: written neutralised, read back as the file's own name.
    from effnet_jax.data import exclusions

    exclusions.write(tmp_path / "ex.csv", [{"file": "train/NORMAL/=cmd.jpeg", "reason": "@dup", "detail": "-"}])
    # The key starts with its split, so only the reason and the detail need a quote.
    assert "train/NORMAL/=cmd.jpeg,'@dup,'-\n" in (tmp_path / "ex.csv").read_text()
    assert exclusions.read(tmp_path / "ex.csv") == {"train/NORMAL/=cmd.jpeg": "@dup"}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_file_name_that_is_not_utf8_loses_no_row(tmp_path, suffix):
    records = [
        {"file": "first.png", "prob_pneumonia": 0.5, "label": "PNEUMONIA", "threshold": 0.5},
        {"file": BAD_NAME, "error": f"{BAD_NAME}: not an image"},
        {"file": "last.png", "prob_pneumonia": 0.25, "label": "NORMAL", "threshold": 0.5},
    ]
    path = tmp_path / f"out{suffix}"
    with PredictionWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    text = path.read_text(encoding="utf-8")
    if suffix == ".csv":
        files = [row["file"] for row in csv.DictReader(io.StringIO(text))]
    else:
        files = [json.loads(line)["file"] for line in text.splitlines()]
    assert files == ["first.png", "scan\\xff\\xfe.png", "last.png"]


# A newline, an ANSI colour code, a right-to-left override, a comma and quotes in one file name.
HOSTILE = 'a\nb\x1b[31mred\u202eevil,"q".png'
ESCAPED = 'a\\nb\\x1b[31mred\\u202eevil,"q".png'


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


# --- effnet-data's reports, figures and exclusion lists -------------------------------------------


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory):
    return cf.write(tmp_path_factory.mktemp("raw") / "chest_xray")


@pytest.mark.parametrize(
    "command, planted",
    [
        ("report", "report.json"),
        ("report", "samples.png"),
        ("clean", "cleaning.json"),
        ("clean", "exclusions.json"),
        ("clean", "exclusions.csv"),
    ],
)
def test_effnet_data_never_writes_through_a_link_planted_in_its_out_folder(
    command, planted, raw_tree, tmp_path, capsys
):
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / planted).symlink_to(outside)
    status = data_cli.main([command, "--data_dir", str(raw_tree), "--out", str(out), "--no_progress"])
    assert status == 2
    assert f"{out / planted}: is a symbolic link; refusing to write through it" in capsys.readouterr().err
    assert outside.read_text() == "not yours\n"


def test_an_exclusion_list_is_not_written_through_a_link(tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    (tmp_path / "list.json").symlink_to(outside)
    with pytest.raises(UnsafeOutputError, match="list.json: is a symbolic link"):
        exclusions.write(tmp_path / "list.json", [{"file": "train/NORMAL/a.jpeg", "reason": "duplicate"}])
    assert outside.read_text() == "{}"


def _tree(root):
    return write_tree(root, GOOD_TREE)


@pytest.mark.parametrize("command", ["report", "clean"])
def test_effnet_data_out_that_is_a_file_is_one_line_before_the_scan(tmp_path, capsys, command):
    # mkdir raised FileExistsError after the whole scan: a traceback.
    out = tmp_path / "out"
    out.write_text("a file")
    status = data_cli.main([command, f"--data_dir={_tree(tmp_path / 'data')}", f"--out={out}", "--no_progress"])
    assert status == 2
    assert capsys.readouterr().err.strip() == f"effnet-data {command}: --out={out}: exists and is not a folder"


def test_effnet_data_out_that_is_a_dangling_link_is_one_line_before_the_scan(tmp_path, capsys):
    # mkdir raised FileExistsError after the whole scan: a traceback.
    out = tmp_path / "out"
    os.symlink(tmp_path / "nowhere" / "x", out)
    root = write_tree(tmp_path / "data", GOOD_TREE)
    assert data_cli.main(["clean", f"--data_dir={root}", f"--out={out}", "--no_progress"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"effnet-data clean: --out={out}: exists and is not a folder (a link to {tmp_path}/nowhere/x)"
    )


# --- effnet-export's and effnet-convert's folders -------------------------------------------------


def test_export_never_writes_through_a_link_planted_in_out(run_copy, tmp_path):
    from effnet_jax.inference.export import export_run

    out = tmp_path / "export"
    out.mkdir()
    outside = tmp_path / "outside.npz"
    outside.write_bytes(b"keep")
    (out / "weights.npz").symlink_to(outside)
    with pytest.raises(UnsafeOutputError, match="weights.npz: is a symbolic link"):
        export_run(runs.open(run_copy, "latest"), str(out), platforms=("cpu",))
    assert outside.read_bytes() == b"keep"


def test_convert_never_writes_its_metadata_through_a_planted_link(tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / METADATA_FILE).symlink_to(outside)
    result = run_module(
        "effnet_jax.cli.convert",
        "--variant=tf_efficientnet_lite0",
        "--input=pypi:efficientnet-lite0",
        f"--output={out}",
    )
    assert result.returncode == 1 and "is a symbolic link" in result.stderr and "Traceback" not in result.stderr
    assert outside.read_text() == "keep" and not (out / "variables").exists()


# --- results records: effnet-results record and tables --------------------------------------------


WHAT_RAN = {"command": "c", "config": None, "commit": "abc", "machine": "m", "date": "d"}


def test_a_results_file_that_is_a_link_is_never_appended_through(tmp_path):
    victim = tmp_path / "victim.jsonl"
    victim.write_text("")
    os.symlink(victim, tmp_path / "recipes.jsonl")
    record = {**WHAT_RAN, "id": "r1"}
    with pytest.raises(UnsafeOutputError, match="recipes.jsonl: is a symbolic link"):
        rt.append_new_record(str(tmp_path / "recipes.jsonl"), record)
    with pytest.raises(UnsafeOutputError, match="recipes.jsonl: is a symbolic link"):
        rt.append_record(str(tmp_path / "recipes.jsonl"), record)
    assert victim.read_text() == ""


def test_a_results_file_that_is_a_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "recipes.jsonl"
    os.mkfifo(fifo)
    record = {**WHAT_RAN, "id": "r1"}
    with pytest.raises(UnsafeOutputError, match="recipes.jsonl: not a regular file"):
        rt.append_new_record(str(fifo), record)
    with pytest.raises(UnsafeOutputError, match="recipes.jsonl: is a FIFO"):
        rt.append_record(str(fifo), record)


def test_a_torn_results_file_is_one_line_naming_it_and_nothing_is_appended(tmp_path):
    path = tmp_path / "recipes.jsonl"
    path.write_text(json.dumps({**WHAT_RAN, "id": "r0"}) + "\n{torn")
    with pytest.raises(ValueError, match=r"recipes.jsonl:2: not a JSON record"):
        rt.append_new_record(str(path), {**WHAT_RAN, "id": "r1"})
    assert path.read_text().endswith("{torn")


NOTHING_RECORDED = {"command": None, "config": None, "commit": None, "machine": None, "date": None}


def test_a_record_appended_to_a_last_line_without_its_newline_starts_its_own_line(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps({**NOTHING_RECORDED, "id": "r0"}))  # saved by an editor that adds no final newline
    rt.append_record(str(path), {**NOTHING_RECORDED, "id": "r1"})
    assert [r["id"] for r in rt.load_records(tmp_path)["runs"]] == ["r0", "r1"]
    rt.append_record(str(path), {**NOTHING_RECORDED, "id": "r2"})  # no blank line added when the newline is there
    assert path.read_text().count("\n") == 3


# --- results pages: what effnet-results tables reads and writes -----------------------------------


def test_results_tables_escape_control_characters_in_every_cell():
    # Before: '\r', an escape code and a right-to-left override were written raw into the .md table.
    spec = {"source": "recipes", "columns": [{"header": "run", "cell": "{id}"}, {"header": "name", "cell": "{name}"}]}
    records = {"recipes": [{"id": "a\rb", "name": "x\x1b[31mred\u202e|y"}]}
    table = rt.render_table("t", spec, records)
    assert table.splitlines()[-1] == "| a\\rb | x\\x1b[31mred\\u202e\\|y |"
    assert "\r" not in table and "\x1b" not in table and "\u202e" not in table
    assert rt.markdown_table(["h\r"], [["a\nb"]]).splitlines() == ["| h\\r |", "|---|", "| a b |"]
    # effnet-results RUN's table cells, from a run's own files, the same way.
    assert run_summary._cell("split\x1b[2J\r\nx") == "split\\x1b[2J x"


STALE = "# Hand-written\n\nprose\n\n<!-- results:t -->\n| old |\n<!-- /results:t -->\n\nmore prose\n"


def _results(folder, spec=None, records=({"x": 1},)):
    folder.mkdir(exist_ok=True)
    (folder / "runs.jsonl").write_text("".join(json.dumps({**NOTHING_RECORDED, **r}) + "\n" for r in records))
    spec = {"t": {"source": "runs", "columns": [{"header": "x", "cell": "{x}"}]}} if spec is None else spec
    (folder / "tables.json").write_text(json.dumps(spec))
    return folder


@pytest.mark.parametrize("where", ["page", "records", "specs"])
def test_tables_reads_no_page_or_record_that_is_a_device(tmp_path, where):
    # /dev/null stands for /dev/zero (read forever before the fix): both are devices, not files.
    results, root = _results(tmp_path / "results"), tmp_path / "root"
    root.mkdir()
    (root / "a.md").write_text(STALE)
    target = {"page": root / "b.md", "records": results / "more.jsonl", "specs": results / "tables.json"}[where]
    target.unlink(missing_ok=True)
    os.symlink(os.devnull, target)
    with pytest.raises(rt.ResultsError, match=f"{target.name}: not a regular file"):
        rt.update_files(root, results, write=True)
    assert (root / "a.md").read_text() == STALE


@pytest.mark.parametrize("where", ["page", "records"])
def test_tables_reads_pages_and_records_within_the_budget(tmp_path, monkeypatch, where):
    monkeypatch.setenv("EFFNET_JAX_DECODE_BUDGET", "1M")  # pages and records may then take 32 KiB
    results, root = _results(tmp_path / "results"), tmp_path / "root"
    root.mkdir()
    big = root / "big.md" if where == "page" else results / "big.jsonl"
    big.write_text("\n" * 40_000)
    with pytest.raises(rt.ResultsError, match="big.*40,000 bytes, larger than the 32,768"):
        rt.update_files(root, results, write=False)


@pytest.mark.parametrize(
    "spec, why",
    [
        ([1, 2], "expected a JSON object of tables, got list"),
        ({"t": {"source": 5, "columns": [{"header": "x", "cell": "{x}"}]}}, "'source' must be"),
        ({"t": {"source": "runs", "columns": [{"header": "x", "cell": 5}]}}, "'cell' must be a template"),
        ({"t": {"source": "runs", "where": 5, "columns": [{"header": "x", "cell": "{x}"}]}}, "'where' must be"),
        (
            {"t": {"source": "runs", "join": [{"source": "runs"}], "columns": [{"header": "x", "cell": "{x}"}]}},
            "'join'",
        ),
        ({"t": {"source": "runs", "columns": [{"header": "x", "cell": "{x:>300000000}"}]}}, "a width or precision"),
        ({"t": {"source": "runs", "columns": [{"header": "x", "cell": "{x:.99999999f}"}]}}, "a width or precision"),
        ({"t": {"source": "runs", "columns": [{"header": "x", "cell": ["{y}", "{x:{x}}"]}]}}, "inside a format spec"),
    ],
    ids=["list", "source-number", "cell-number", "where-number", "join-without-on", "width", "precision", "nested"],
)
def test_a_table_spec_of_another_shape_is_one_line_naming_it(tmp_path, spec, why):
    results = _results(tmp_path / "results", spec, records=({"x": 1000000000},))
    with pytest.raises(rt.ResultsError, match=why) as e:
        rt.render_all(results)
    assert "tables.json" in str(e.value) and "\n" not in str(e.value)


def test_the_shipped_table_specs_pass_the_checks():
    from helpers import REPO

    assert rt.load_specs(REPO / "results")


class _Killed(BaseException):
    """Stands for kill -9 arriving mid-write."""


def test_tables_write_killed_mid_write_leaves_the_page_whole(tmp_path, monkeypatch):
    results, root = _results(tmp_path / "results"), tmp_path / "root"
    root.mkdir()
    (root / "README.md").write_text(STALE)

    class Dying:
        def __init__(self, fd, mode, **kwargs):
            self.f = open(fd, mode, **kwargs)  # noqa: SIM115 (closed in __exit__)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise _Killed

    monkeypatch.setattr(output_files, "open", Dying, raising=False)
    with pytest.raises(_Killed):
        rt.update_files(root, results, write=True)
    assert (root / "README.md").read_text() == STALE
    monkeypatch.undo()
    rt.update_files(root, results, write=True)  # the next run replaces the half-written temporary file
    assert "| 1 |" in (root / "README.md").read_text() and "more prose" in (root / "README.md").read_text()
    assert not (root / "README.md.tmp").exists()


def test_tables_write_refuses_a_link_at_a_pages_temporary_name(tmp_path):
    results, root = _results(tmp_path / "results"), tmp_path / "root"
    root.mkdir()
    (root / "README.md").write_text(STALE)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, root / "README.md.tmp")
    with pytest.raises(rt.ResultsError, match=r"README.md.tmp: is a symbolic link"):
        rt.update_files(root, results, write=True)
    assert victim.read_text() == "keep" and (root / "README.md").read_text() == STALE


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


# --- effnet-results record --out: read within the budget --------------------------------------------

RECORD_BASE = {"command": "c", "config": "c.py", "commit": "abc", "machine": "cpu", "date": "2024-01-01"}


def _record(tmp_path, monkeypatch, out, record_id: str) -> int:
    """``effnet-results record RUN --out=out --id=record_id``, the run and its record stood in for."""
    fv = flags.FlagValues()
    results_cli.define_flags(fv)
    fv(
        ["effnet-results", f"--id={record_id}", "--name=n", "--kept=no", "--run_command=c", "--run_config=c.py"]
        + ["--commit=abc", "--machine=cpu", f"--out={out}"]
    )
    monkeypatch.setattr(results_cli, "FLAGS", fv)
    monkeypatch.setattr(runs, "open", lambda workdir, checkpoint: object())
    monkeypatch.setattr(recipe_record, "recipe_record", lambda run, record_id, **_: {**RECORD_BASE, "id": record_id})
    return results_cli.record_main(str(tmp_path / "run"))


def test_results_record_refuses_a_records_file_over_the_budget_naming_it(tmp_path, monkeypatch, capsys):
    # Before: the whole file was read (a sparse one of gigabytes too), then the record appended.
    monkeypatch.setenv(limits.ENV_VAR, "32K")  # a results file may hold 32K / 32 = 1,024 bytes
    out = tmp_path / "recipes.jsonl"
    out.write_text('{"id": "r0", "name": "' + "x" * 2000 + '"}\n')
    before = out.read_bytes()
    assert _record(tmp_path, monkeypatch, out, "r1") == 1
    assert capsys.readouterr().err == (
        f"effnet-results: error: {out}: {len(before):,} bytes, larger than the 1,024 accepted for a results file "
        "(budget / 32); nothing appended\n"
    )
    assert out.read_bytes() == before


def test_results_record_still_appends_a_new_id_and_refuses_a_held_one(tmp_path, monkeypatch, capsys):
    out = tmp_path / "recipes.jsonl"
    out.write_text('{"id": "r0"}\n')
    assert _record(tmp_path, monkeypatch, out, "r1") == 0
    assert [line.startswith('{"command"') for line in out.read_text().splitlines()] == [False, True]
    capsys.readouterr()
    assert _record(tmp_path, monkeypatch, out, "r0") == 1
    assert capsys.readouterr().err == f"effnet-results: error: {out}:1: a record with id 'r0' exists already\n"


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# --- an output never replaces an input -------------------------------------------------------------


def test_gradcam_into_the_input_folder_never_overwrites_an_input_image(predictor, tmp_path):
    # Before: y.png's overlay y.gradcam.png replaced the input image of that name.
    inputs = [
        _write_png(tmp_path / name, i) for i, name in enumerate(["y.png", "y.gradcam.png", "y.gradcam_panel.png"])
    ]
    before = [_digest(p) for p in inputs]
    with pytest.raises(UnsafeOutputError, match=rf"^{tmp_path}/y.gradcam.png: is one of the inputs; refusing"):
        list(predictor.predict(inputs, gradcam_dir=str(tmp_path)))
    assert [_digest(p) for p in inputs] == before
    assert sorted(os.listdir(tmp_path)) == ["y.gradcam.png", "y.gradcam_panel.png", "y.png"]
    # An input folder whose names do not meet the overlays' still takes them.
    other = tmp_path / "other"
    other.mkdir()
    records = list(predictor.predict([_write_png(other / "x.png")], gradcam_dir=str(other)))
    assert records[0]["gradcam"] == str(other / "x.gradcam.png")


def test_effnet_predict_out_naming_an_input_is_refused_before_it_is_emptied(workdir, tmp_path):
    victim = tmp_path / "scan.csv"
    victim.write_text("a,b\n1,2\n")
    result = run_module("effnet_jax.cli.predict", f"--workdir={workdir}", f"--out={victim}", str(victim))
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"effnet-predict: error: --out={victim}: is one of the inputs; refusing to overwrite it"
    )
    assert victim.read_text() == "a,b\n1,2\n"


# --- stopped part way: the earlier output stays whole ----------------------------------------------


class Stopped(BaseException):
    """Stands in for a kill mid-write."""


def _half_then_stop(data=b"\x89PNG half"):
    def write(self_or_fig, target, *args, **kwargs):
        if isinstance(target, (str, os.PathLike)):
            with open(target, "wb") as f:
                f.write(data)
        else:
            target.write(data)
        raise Stopped

    return write


def test_a_plot_stopped_part_way_keeps_the_earlier_png(tmp_path, monkeypatch):
    # Before: eval truncated the plot first (_own) and matplotlib then wrote the name in place.
    path = tmp_path / "roc.png"
    plots.plot_roc_curve(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.7]), str(path))
    before = _digest(path)
    evaluation._own(str(path))
    assert _digest(path) == before
    from matplotlib.figure import Figure

    monkeypatch.setattr(Figure, "savefig", _half_then_stop())
    with pytest.raises(Stopped):
        plots.plot_roc_curve(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.7]), str(path))
    assert _digest(path) == before and os.listdir(tmp_path) == ["roc.png"]


def test_a_gradcam_overlay_stopped_part_way_keeps_the_earlier_one(tmp_path, monkeypatch):
    path = tmp_path / "x.gradcam.png"
    image, heatmap = np.zeros((20, 20), np.uint8), np.linspace(0, 1, 400, dtype=np.float32).reshape(20, 20)
    gradcam_lib.save_overlay(image, heatmap, path)
    before = _digest(path)
    monkeypatch.setattr(Image.Image, "save", _half_then_stop())
    with pytest.raises(Stopped):
        gradcam_lib.save_overlay(image, heatmap, path)
    assert _digest(path) == before and os.listdir(tmp_path) == ["x.gradcam.png"]


def test_predict_out_keeps_the_earlier_file_until_its_rows_are_written(tmp_path):
    # Before: --out was emptied at the start, so a kill part way lost the earlier predictions.
    path = tmp_path / "preds.jsonl"
    path.write_text('{"file": "earlier.png"}\n')
    writer = PredictionWriter(str(path))
    writer.write({"file": "a.png", "prob_pneumonia": 0.5})
    assert path.read_text() == '{"file": "earlier.png"}\n'  # a kill here leaves it whole
    assert (tmp_path / "preds.jsonl.tmp").read_text() == '{"file": "a.png", "prob_pneumonia": 0.5}\n'
    writer.close()
    assert path.read_text() == '{"file": "a.png", "prob_pneumonia": 0.5}\n'
    assert os.listdir(tmp_path) == ["preds.jsonl"]


def test_write_text_stopped_part_way_keeps_the_earlier_file(tmp_path, monkeypatch):
    # Before: a run's config.json or an exclusion list was truncated first and written in place.
    path = tmp_path / "exclusions.json"
    path.write_text('{"excluded": ["a"]}\n')
    real_open = output_files.open_output

    class DiskFullsPartWay:
        def __init__(self, name, mode="w", **kwargs):
            self.file = real_open(name, mode, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, text):
            self.file.write(text[:6])
            self.file.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output_files, "open_output", DiskFullsPartWay)
    with pytest.raises(OSError, match=rf"No space left on device: '{path}'"):
        write_text(path, '{"excluded": ["a", "b"]}\n')
    assert path.read_text() == '{"excluded": ["a"]}\n' and os.listdir(tmp_path) == ["exclusions.json"]


def test_an_export_that_fails_part_way_leaves_the_earlier_export_loading(workdir, tmp_path, monkeypatch):
    # Before: model.json was removed first and each file rewritten in place: a full disk lost the export.
    run = runs.open(workdir, "best")
    out = tmp_path / "exported"
    export_lib.export_run(run, str(out), platforms=("cpu",))
    before = {name: _digest(out / name) for name in os.listdir(out)}
    real_open = export_lib.open_output

    def full_disk(name, mode="w", **kwargs):
        if os.path.basename(name).startswith("weights.npz"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(name, mode, **kwargs)

    monkeypatch.setattr(export_lib, "open_output", full_disk)
    with pytest.raises(OSError, match=rf"No space left on device: '{out}/weights.npz.tmp'"):
        export_lib.export_run(run, str(out), platforms=("cpu",))
    assert {name: _digest(out / name) for name in os.listdir(out)} == before
    serving.load(str(out))


# --- outputs inside the run they come from ---------------------------------------------------------


@pytest.mark.parametrize(
    "module, args, flag",
    [
        ("effnet_jax.cli.export", ["--out={ckpt}/99"], "--out={ckpt}/99"),
        ("effnet_jax.cli.predict", ["--gradcam={ckpt}/7", "{img}"], "--gradcam={ckpt}/7"),
        ("effnet_jax.cli.predict", ["--out={ckpt}/8/p.csv", "{img}"], "--out={ckpt}/8"),
        ("effnet_jax.cli.evaluate", ["--out_dir={ckpt}/9"], "--out_dir={ckpt}/9"),
    ],
)
def test_an_output_folder_inside_the_runs_checkpoints_is_refused(workdir, tmp_path, module, args, flag):
    # Before: the folder was made first; named like a step, it read as a checkpoint and the run no longer loaded.
    ckpt = os.path.join(workdir, "checkpoints")
    before = sorted(os.listdir(ckpt))
    img = _write_png(tmp_path / "x.png")
    result = run_module(module, f"--workdir={workdir}", *(a.format(ckpt=ckpt, img=img) for a in args))
    assert result.returncode == 1, result.stderr[-2000:]
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(f"error: {flag.format(ckpt=ckpt)}: inside the run's checkpoints ({ckpt}); give a folder outside it")
    )
    assert sorted(os.listdir(ckpt)) == before


# --- a full disk is one line -----------------------------------------------------------------------


def _main_of(module, monkeypatch, **flag_values):
    """``module.main`` with its flags parsed from ``flag_values`` on a fresh FlagValues."""
    fv = flags.FlagValues()
    module.define_flags(fv)
    fv(["prog", *(f"--{k}={v}" for k, v in flag_values.items())])
    monkeypatch.setattr(module, "FLAGS", fv)
    return module.main


def test_effnet_export_on_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    from effnet_jax.cli import export as export_cli

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", f"{tmp_path}/out/weights.npz.tmp")

    monkeypatch.setattr(export_lib, "export_run", full_disk)
    monkeypatch.setattr(runs, "open", lambda *args: None)
    main = _main_of(export_cli, monkeypatch, workdir=tmp_path / "run", out=tmp_path / "out")
    assert main(["effnet-export"]) == 1
    assert capsys.readouterr().err == (
        f"effnet-export: error: {tmp_path}/out/weights.npz.tmp: cannot write (No space left on device)\n"
    )


def test_effnet_predict_on_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    from effnet_jax.cli import predict as predict_cli

    def records():
        yield {"file": "a.png", "prob_pneumonia": 0.5}
        raise OSError(errno.ENOSPC, "No space left on device", "cams/b.gradcam.png")

    out = tmp_path / "p.jsonl"
    _main_of(predict_cli, monkeypatch, out=out)
    assert predict_cli._emit(records(), gradcam_dir="cams") == 1
    assert capsys.readouterr().err == (
        "effnet-predict: error: cams/b.gradcam.png: cannot write (No space left on device) (1 image(s) done before it)\n"
    )
    assert out.read_text() == '{"file": "a.png", "prob_pneumonia": 0.5}\n'  # the rows done are kept


def test_effnet_convert_on_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    from effnet_jax.cli import convert as convert_cli
    from effnet_jax.weights import export as weights_export

    def full_disk(*args, **kwargs):
        raise ValueError(
            'RESOURCE_EXHAUSTED: Error writing "params.x/0" in OCDBT database at local file "/o/variables.'
            "orbax-checkpoint-tmp/ocdbt.process_0/\": Failed to write 10 bytes: No space left on device [os_error_code='28']"
        )

    monkeypatch.setattr(weights_export, "convert_to_checkpoint", full_disk)
    out = tmp_path / "out"
    main = _main_of(convert_cli, monkeypatch, variant="efficientnet_b0", input="w.safetensors", output=out)
    assert main(["effnet-convert"]) == 1
    assert capsys.readouterr().err == f"effnet-convert: error: --output={out}: cannot write (No space left on device)\n"


def test_a_write_error_without_a_file_name_names_the_output(tmp_path):
    with pytest.raises(OSError) as caught, output_files.replaced_output(tmp_path / "m.json"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.filename == str(tmp_path / "m.json") and not os.listdir(tmp_path)


@pytest.mark.parametrize("command", ["report", "clean"])
def test_effnet_data_refuses_an_out_inside_the_data_it_reads(tmp_path, command):
    # Before: report wrote its PNG figures into a class folder, where training would read them as X-rays.
    from data_fixtures import GOOD_TREE, write_tree

    root = write_tree(tmp_path / "chest_xray", GOOD_TREE)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    out = root / "train" / "NORMAL"
    result = run_module("effnet_jax.cli.data", command, f"--data_dir={tmp_path}", f"--out={out}", "--no_progress")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"effnet-data: --out={out}: inside --data_dir, which is only read ({tmp_path}); give a folder outside it"
    )
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    beside = tmp_path.parent / f"{tmp_path.name}-report"  # outside --data_dir: written
    result = run_module("effnet_jax.cli.data", command, f"--data_dir={tmp_path}", f"--out={beside}", "--no_progress")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before and any(beside.iterdir())


def test_a_data_report_figure_stopped_part_way_keeps_the_earlier_png(tmp_path, monkeypatch):
    # Before: effnet-data's figures were written in place, so a kill left a PNG cut short.
    from matplotlib.figure import Figure

    from effnet_jax.data.eda import figures

    classes = {"NORMAL": {"images": 3}, "PNEUMONIA": {"images": 5}}
    report = {"splits": {"train": {"classes": classes}}, "cleaning": {"counts_after": {"train": {"NORMAL": 3}}}}
    path = tmp_path / "class_balance.png"
    figures.class_balance(report, path)
    before = _digest(path)
    monkeypatch.setattr(Figure, "savefig", _half_then_stop())
    with pytest.raises(Stopped):
        figures.class_balance(report, path)
    assert _digest(path) == before and os.listdir(tmp_path) == ["class_balance.png"]
