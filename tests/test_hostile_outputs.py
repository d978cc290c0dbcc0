"""Issue 30, items 3-6: outputs stay where asked, no blank diagnoses, stale data, bad config values, torn logs.

Every hostile input is crafted here in tmp_path; the one run is test_export's untrained
workdir (random weights, one checkpoint), so nothing is trained.
"""

import csv
import io
import json
import logging
import os
import subprocess
import sys
import warnings

import data_fixtures as fx
import numpy as np
import pytest
from dicom_fixtures import radiograph, write_dicom
from helpers import REPO, hand_made_run, tiny_config
from PIL import Image

from effnet_jax.cli import errors
from effnet_jax.data import imaging, prepare
from effnet_jax.inference import evaluation
from effnet_jax.inference.inputs import expand_inputs
from effnet_jax.inference.prediction_output import PredictionWriter
from effnet_jax.inference.tta import TTAConfig
from effnet_jax.output_files import UnsafeOutputError, csv_cell, open_output, short_hash
from effnet_jax.runs import layout, metrics_log
from effnet_jax.runs import writer as writer_lib
from effnet_jax.train.config import validate_config

ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
BAD_NAME = os.fsdecode(b"scan\xff\xfe.png")  # not UTF-8: Python keeps the bytes as surrogates


def _png(path, seed=0) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 36), dtype=np.uint8)).save(path, format="PNG")
    return str(path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from export_fixtures import make_workdir

    path = tmp_path_factory.mktemp("run")
    return make_workdir(path)


@pytest.fixture(scope="module")
def predictor(workdir):
    from effnet_jax import runs
    from effnet_jax.inference.prediction import Predictor

    return Predictor(runs.open(workdir, "best"), batch_size=4)


# --- outputs stay where they were asked to go ------------------------------------------------------


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


def test_gradcam_names_are_distinct_and_never_written_through_links(predictor, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    inputs = [_png(a / "x.png", 1), _png(b / "x.png", 2)]
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


def test_effnet_predict_with_hostile_names_and_a_linked_out(workdir, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    names = ["=cmd.png", "-2+3.png", "@sum.png"]
    for i, name in enumerate(names):
        _png(images / name, i)
    _png(os.path.join(os.fsencode(images), os.fsencode(BAD_NAME)), 9)
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


# --- no diagnosis from an image that is not there ---------------------------------------------------


def _float_tiff(path, value) -> str:
    pixels = np.random.default_rng(0).random((24, 20)).astype(np.float32)
    pixels[5, 7] = value
    Image.fromarray(pixels, mode="F").save(path, format="TIFF")
    return str(path)


def test_non_finite_or_blanked_pixels_are_error_records(predictor, tmp_path):
    pixels = radiograph()
    files = [
        _float_tiff(tmp_path / "nan.tif", np.nan),
        _float_tiff(tmp_path / "inf.tif", np.inf),
        write_dicom(tmp_path / "slope.dcm", pixels, rescale=("NaN", 0)),
        write_dicom(tmp_path / "center.dcm", pixels, window=("NaN", 400)),
        write_dicom(tmp_path / "width.dcm", pixels, window=(2000, "NaN")),
        write_dicom(tmp_path / "blank.dcm", pixels, window=(1e9, 1)),  # every pixel below the window
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom's own note on a 'NaN' DS value
        records = list(predictor.predict(files))
    assert [set(r) for r in records] == [{"file", "error"}] * len(files)
    reasons = [r["error"] for r in records]
    assert all(e.startswith(f) and "\n" not in e for e, f in zip(reasons, files))
    assert "1 non-finite pixel value(s)" in reasons[0] and "1 non-finite pixel value(s)" in reasons[1]
    assert "non-finite pixel value(s) after the DICOM rescale" in reasons[2]
    assert "gives a non-finite range" in reasons[3] and "gives a non-finite range" in reasons[4]
    assert "every pixel is 0 after the DICOM rescale and window" in reasons[5]


def test_a_constant_16_bit_image_is_refused_but_a_flat_8_bit_one_is_read():
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 20), 3000, np.uint16)).save(buffer, format="PNG")
    with pytest.raises(imaging.BadImageError, match=r"^flat.png: every pixel of this I;16 image is 3000"):
        imaging.decode_file(buffer.getvalue(), "flat.png")
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 20), 128, np.uint8)).save(buffer, format="PNG")
    assert imaging.decode_file(buffer.getvalue(), "gray.png").getextrema() == (128, 128)


# --- prepared data is refused when its source changed ---------------------------------------------


def test_prepared_data_is_refused_when_a_file_changed_but_kept_its_name_and_size(tmp_path):
    raw = fx.write_tree(tmp_path / "chest_xray", fx.GOOD_TREE)
    factory = prepare.BuilderFactory(
        name="chest_xray", manual_dir=str(raw), data_dir=str(tmp_path / "tfds"), max_size=36
    )
    builder = prepare.ensure_prepared(factory)
    assert builder.info.metadata["source_fingerprint"].startswith("crc2:")
    victim = next(p for p in sorted(raw.rglob("*.jpeg")) if "train/NORMAL" in str(p))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same name, same size, other bytes
    victim.write_bytes(bytes(data))
    with pytest.raises(prepare.StalePreparedDataError, match=r"\(files added, removed or changed\): delete"):
        prepare.ensure_prepared(factory)
    # Another folder with the same names and sizes but other content is another source.
    other = fx.write_tree(tmp_path / "other", fx.GOOD_TREE)
    first = next(p for p in sorted(other.rglob("*.jpeg")) if "test/PNEUMONIA" in str(p))
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0x01
    first.write_bytes(bytes(data))
    moved = prepare.BuilderFactory(
        name="chest_xray", manual_dir=str(other), data_dir=str(tmp_path / "tfds"), max_size=36
    )
    with pytest.raises(prepare.StalePreparedDataError):
        prepare.ensure_prepared(moved)


def test_data_prepared_with_the_old_names_and_sizes_fingerprint_is_refused(tmp_path, monkeypatch):
    raw = fx.write_tree(tmp_path / "chest_xray", fx.GOOD_TREE)
    factory = prepare.BuilderFactory(
        name="chest_xray", manual_dir=str(raw), data_dir=str(tmp_path / "tfds"), max_size=36
    )
    builder = prepare.ensure_prepared(factory)
    builder.info.metadata["source_fingerprint"] = "0123456789abcdef"  # as recorded before content hashes
    monkeypatch.setattr(prepare.BuilderFactory, "__call__", lambda self: builder)
    with pytest.raises(prepare.StalePreparedDataError, match="prepared before file contents were fingerprinted"):
        prepare.ensure_prepared(factory)


# --- every bad config value is one line naming the key --------------------------------------------


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("image_size", 0, "config.image_size=0: expected None (the variant's) or an integer from 32 to 1024"),
        ("image_size", 100000, "config.image_size=100000: expected None (the variant's) or an integer from 32 to 1024"),
        ("batch_size", -4, "config.batch_size=-4: expected an integer >= 1"),
        ("log_every_steps", 0, "config.log_every_steps=0: expected an integer >= 1"),
        ("ema_decay", 2.0, "config.ema_decay=2.0: expected a number in [0, 1) (0 = no EMA)"),
        ("model.name", "efficientnet_b9", "config.model.name='efficientnet_b9': not a variant; did you mean "),
        ("data.on_bad_image", "maybe", "config.data.on_bad_image='maybe': expected one of 'error', 'skip'"),
        ("data.balance", "over", "config.data.balance='over': expected one of 'none', 'oversample', 'undersample'"),
        ("model.name", "resnet50", "config.model.name='resnet50': not a variant; one of efficientnet_b0, "),
    ],
)
def test_bad_config_values_are_refused_naming_the_key(key, value, message):
    config = tiny_config(**{key: value})
    with pytest.raises(ValueError) as info:
        validate_config(config)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert errors.one_line(info.value)[0] == errors.EXIT_USAGE
    validate_config(tiny_config())  # the tests' own config is valid


def test_effnet_train_with_a_bad_image_size_is_one_line_before_any_work(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "effnet_jax.cli.train", "--config=configs/debug_synthetic.py"]
        + [f"--workdir={tmp_path / 'run'}", "--config.image_size=100000"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == errors.EXIT_USAGE
    assert proc.stderr.strip().splitlines()[-1] == (
        "effnet-train: config.image_size=100000: expected None (the variant's) or an integer from 32 to 1024"
    )
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


# --- a full disk: exit 5 in one line ---------------------------------------------------------------

_DISK_FULL = """
import errno, sys
from effnet_jax.runs import record as run_record
def full(workdir, record):
    raise OSError(errno.ENOSPC, "No space left on device", workdir + "/run.json")
run_record.write = full
sys.argv = ["effnet-train", "--config=configs/debug_synthetic.py", "--workdir=" + sys.argv[1],
            "--config.image_size=32", "--config.data.synthetic_examples=32", "--config.batch_size=8"]
from effnet_jax.cli.train import run
run()
"""


def test_a_full_disk_during_training_exits_5_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _DISK_FULL, str(tmp_path / "run")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == errors.EXIT_DISK, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"effnet-train: cannot write {tmp_path / 'run'}/run.json: No space left on device (errno ENOSPC)"
    )
    assert "Traceback" not in proc.stderr


def test_a_full_disk_reported_by_tensorstore_is_exit_5_and_said_once(caplog):
    text = (
        'RESOURCE_EXHAUSTED: Error writing "params.x/0" in OCDBT database at local file "/w/checkpoints/20/state/": '
        "Failed to write 2282169 bytes to file 8: No space left on device [os_error_code='28']"
    )
    try:
        try:
            raise ValueError(text)
        except ValueError as e:
            raise RuntimeError("save failed") from e
    except RuntimeError as wrapped:
        assert errors.one_line(wrapped) == (
            errors.EXIT_DISK,
            "cannot write /w/checkpoints/20/state/: No space left on device",
        )
    log = logging.getLogger("test_hostile_outputs.disk")
    shared = errors.DiskErrorsInOneLine()
    log.addFilter(shared)  # as on absl's logger and on the root logger's handlers: one instance
    caplog.handler.addFilter(shared)
    with caplog.at_level(logging.INFO, logger=log.name):
        for _ in range(3):
            try:
                raise ValueError(text)
            except ValueError:
                log.exception("Task exception was never retrieved")
        log.info("an ordinary line")
    assert [r.getMessage() for r in caplog.records] == [
        "writing failed /w/checkpoints/20/state/: No space left on device (a background save; the run stops at its "
        "next wait)",
        "an ordinary line",
    ]
    assert caplog.records[0].exc_info is None


# --- a torn metrics.jsonl, link loops, a soup of one run ------------------------------------------


def test_a_torn_last_line_of_metrics_jsonl_is_ignored_and_dropped_on_resume(tmp_path, caplog):
    records = [{"step": 2, "split": "train", "loss": 0.5}, {"step": 4, "split": "validation", "auc": 0.75}]
    path = tmp_path / layout.METRICS
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 6, "split": "tr')
    with caplog.at_level(logging.WARNING, logger="effnet_jax.reporting"):
        assert metrics_log.read_metrics(str(tmp_path)) == records
        assert metrics_log.read_metrics(str(tmp_path), "validation") == records[1:]
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: its last line is cut short (24 bytes, not a record); ignoring it"
    ]
    writer_lib.truncate_after(str(tmp_path), 4)  # what a resume at step 4 does first
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in records)
    path.write_text(path.read_text() + "garbage\n" + json.dumps(records[0]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 3 is not a JSON record"):
        metrics_log.read_metrics(str(tmp_path))


def test_globs_never_follow_linked_folders_into_loops(tmp_path):
    scans = tmp_path / "scans"
    (scans / "sub").mkdir(parents=True)
    for rel in ("a.png", "sub/b.png", ".hidden.png"):
        _png(scans / rel)
    os.symlink("..", scans / "sub" / "up")
    os.symlink(scans, scans / "self")
    assert expand_inputs([f"{scans}/**/*.png"]) == [f"{scans}/a.png", f"{scans}/sub/b.png"]
    assert expand_inputs([f"{scans}/**"]) == [f"{scans}/a.png", f"{scans}/sub/b.png"]


def test_a_soup_given_one_run_twice_through_a_link_is_refused(tmp_path):
    from effnet_jax.train.soup import make_soup

    (tmp_path / "run").mkdir()
    os.symlink(tmp_path / "run", tmp_path / "alias")
    with pytest.raises(ValueError, match=r"soup member .*/run is given more than once \(as .*/alias, which resolves"):
        make_soup([str(tmp_path / "run"), str(tmp_path / "alias")], str(tmp_path / "soup"))
    with pytest.raises(ValueError, match="is given more than once"):
        make_soup([str(tmp_path / "run"), f"{tmp_path}/run/"], str(tmp_path / "soup"))
    assert not (tmp_path / "soup").exists()
