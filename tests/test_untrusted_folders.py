"""Image folders as they come from the internet: layouts, links, names, external folders, exclusion lists,
PneumoniaMNIST.

What effnet-data (prepare, report, clean), effnet-train's data and external splits, effnet-eval
--split=folder:PATH, effnet-predict and effnet-adapt walk and read (zip archives:
test_untrusted_zips.py; prepared sets: test_untrusted_prepared.py). Every tree is written here: a
link is never followed out of the folder given, a folder hundreds deep is walked without recursion,
a file that cannot be read is named in one line (or skipped by policy), and a list from a user names
keys, never paths to open (docs/untrusted-inputs.md).
"""

import errno
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import urllib.request
import warnings
import zipfile
import zlib

import crafted_fixtures as crafted
import data_fixtures as fx
import numpy as np
import pytest
from data_fixtures import GOOD_TREE, encode, jpeg, write_mnist_npz, write_tree, xray
from dicom_fixtures import radiograph, write_dicom
from helpers import VICTIM_TEXT, eval_pass, tiny_config, victim_file
from PIL import Image
from run_fixtures import resume_config

from effnet_jax import limits
from effnet_jax.cli import data as data_cli
from effnet_jax.cli import errors
from effnet_jax.cli.errors import one_line
from effnet_jax.data import exclusions, external, folders, imaging, kermany, prepare, sources, transforms
from effnet_jax.data.builders import pneumonia_mnist
from effnet_jax.data.eda import figures, scan
from effnet_jax.inference import gradcam
from effnet_jax.inference.inputs import expand_inputs
from effnet_jax.inference.prediction import ImageReadError, Preprocessor
from effnet_jax.output_files import UnsafeOutputError
from effnet_jax.train import config as config_lib
from effnet_jax.train import loop

# --- folder layouts: depth, files where folders belong, names -------------------------------------


def _frames() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


def _chain(top, depth: int, name: str = "d"):
    """``top/d/d/.../d`` ``depth`` folders deep; returns the deepest."""
    path = top
    for _ in range(depth):
        path = path / name
    path.mkdir(parents=True)
    return path


def test_a_data_folder_hundreds_of_folders_deep_is_scanned(tmp_path):
    # pathlib's rglob recursed: a downloaded tree 1,200 folders deep was a RecursionError traceback.
    root = write_tree(tmp_path / "data", GOOD_TREE)
    (_chain(root / "train/NORMAL", 300) / "x.png").write_bytes(b"")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(_frames() + 150)
    try:
        layout = kermany.scan(root)
    finally:
        sys.setrecursionlimit(limit)
    assert f"{root}/train/NORMAL/d: stray folder inside a class folder" in layout.problems
    assert len(layout.files["train"]) == 11


def test_predict_and_adapt_walk_a_folder_hundreds_of_folders_deep(tmp_path):
    # os.walk and pathlib's '**' recursed: RecursionError tracebacks in effnet-predict and effnet-adapt.
    png = encode(xray(1), "PNG")
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "a.png").write_bytes(png)
    (_chain(tmp_path / "scans" / "sub", 300) / "deep.png").write_bytes(png)
    deep = str(tmp_path / "scans" / "sub" / os.path.join(*["d"] * 300) / "deep.png")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(_frames() + 150)
    try:
        walked = expand_inputs([str(tmp_path / "scans")])
        globbed = expand_inputs([f"{tmp_path}/scans/**/*.png"])
        many = expand_inputs([f"{tmp_path}/scans/**/**/**/**/**/**/**/**/*.png"])  # each path matched once
    finally:
        sys.setrecursionlimit(limit)
    assert walked == globbed == many == [f"{tmp_path}/scans/a.png", deep]


def test_a_folder_too_deep_to_list_is_a_listed_problem(tmp_path):
    root = write_tree(tmp_path / "data", GOOD_TREE)
    fd = os.open(root / "train" / "NORMAL", os.O_RDONLY)
    for _ in range(18):  # 18 x 251 bytes: past the 4,096 a path may have, made a folder at a time
        os.mkdir("f" * 250, dir_fd=fd)
        inner = os.open("f" * 250, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)
    layout = kermany.scan(root)
    assert any(p.endswith("cannot be listed (File name too long); its files are not read") for p in layout.problems)
    assert len(layout.files["train"]) == 11


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_a_class_folder_that_is_a_file_is_named_as_not_a_folder(tmp_path, kind):
    root = write_tree(tmp_path / "data", {k: v for k, v in GOOD_TREE.items() if not k.startswith("test/NORMAL/")})
    (root / "test/NORMAL").write_bytes(b"x") if kind == "file" else os.mkfifo(root / "test/NORMAL")
    with pytest.raises(kermany.LayoutError, match=r"/test/NORMAL: not a folder \(every split needs"):
        kermany.scan(root)


def test_a_backslash_in_a_file_name_is_part_of_its_key(tmp_path):
    # 'train/NORMAL/test\NORMAL\IM-0200-0001.jpeg' was keyed test/NORMAL/IM-0200-0001.jpeg: excluding it
    # (a duplicate of a training image, say) left out the real test image too.
    root = write_tree(tmp_path / "data", GOOD_TREE)
    (root / "train/NORMAL/test\\NORMAL\\IM-0200-0001.jpeg").write_bytes(jpeg(1))
    keys = [info.key for info in scan.scan_raw(root, progress=False).images]
    assert len(set(keys)) == len(keys) == 17
    assert "train/NORMAL/test\\NORMAL\\IM-0200-0001.jpeg" in keys
    listed = tmp_path / "list.csv"
    listed.write_text("file,reason\ntrain/NORMAL/test\\NORMAL\\IM-0200-0001.jpeg,dup\ntrain\\NORMAL\\b.jpeg,typed\n")
    assert exclusions.read(listed) == {
        "train/NORMAL/test\\NORMAL\\IM-0200-0001.jpeg": "dup",
        "train/NORMAL/b.jpeg": "typed",  # a key typed with Windows separators still reads
    }


def _ramp_png(width=40, height=30) -> bytes:
    out = io.BytesIO()
    Image.fromarray((np.arange(width * height) % 251).astype(np.uint8).reshape(height, width)).save(out, "PNG")
    return out.getvalue()


def test_a_file_name_that_is_not_utf8_is_prepared_with_escapes(tmp_path):
    # The name went into a TFDS text feature as surrogates: a RuntimeError deep in TFDS.
    raw = tmp_path / "task"
    for split, count in (("train", 3), ("test", 1)):
        for cls in ("A", "B"):
            (raw / split / cls).mkdir(parents=True)
            for i in range(count):
                (raw / split / cls / f"{cls}{i}.png").write_bytes(_ramp_png())
    odd = os.fsencode(raw / "train" / "A") + b"/scan\xff.png"
    with open(odd, "wb") as f:
        f.write(_ramp_png())
    factory = prepare.BuilderFactory(name="folder", manual_dir=str(raw), data_dir=str(tmp_path / "tfds"), max_size=32)
    builder = prepare.ensure_prepared(factory)
    assert builder.info.splits["train"].num_examples == 7
    names = {r["file_name"].decode() for r in builder.as_data_source(split="train")}
    assert "scan\\xff.png" in names


def _tree(root):
    return write_tree(root, GOOD_TREE)


@pytest.mark.parametrize("name", ["bad\nIM-0009-0001.jpeg", "IM-\x1b[2J-0009.jpeg", "IM-\u202e0009.jpeg"])
def test_a_bad_file_whose_name_holds_control_characters_is_named_on_one_line(tmp_path, capsys, name):
    # The name was printed as it is: a newline split the one-line error, an escape code reached the terminal.
    root = _tree(tmp_path / "data")
    (root / "train" / "NORMAL" / name).write_bytes(b"not an image")
    status = data_cli.main(["prepare", "--name=chest_xray", f"--manual_dir={root}", f"--data_dir={tmp_path / 'tfds'}"])
    assert status == 3
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("effnet-data prepare:")]
    assert len(err) == 1 and "not an image" in err[0]
    escaped = name.encode("unicode_escape").decode("ascii")
    assert escaped in err[0] and name not in err[0]


# --- linked folders -------------------------------------------------------------------------------


@pytest.mark.parametrize("linked", ["test/NORMAL", "val"])
def test_a_class_or_split_folder_that_is_a_link_is_a_listed_problem_not_an_empty_folder(tmp_path, linked):
    # The walk never goes into a linked folder, so its images were silently missing from the split.
    elsewhere = _tree(tmp_path / "elsewhere")
    root = _tree(tmp_path / "data")
    shutil.rmtree(root / linked)
    os.symlink(elsewhere / linked, root / linked)
    layout = kermany.scan(root)
    assert [p for p in layout.problems if p.startswith(f"{root / linked}: a symbolic link to a folder")]
    assert not [rel for entries in layout.files.values() for _, rel in entries if rel.startswith(linked + "/")]


def test_a_linked_train_folder_is_one_line_naming_it(tmp_path):
    elsewhere = _tree(tmp_path / "elsewhere")
    root = tmp_path / "data"
    root.mkdir()
    os.symlink(elsewhere / "train", root / "train")
    with pytest.raises(kermany.LayoutError, match=r"/data/train: a symbolic link to a folder; links to folders"):
        kermany.scan(root)


def test_a_data_folder_that_is_a_link_inside_the_folder_given_is_named_with_where_it_leads(tmp_path, capsys):
    # Before: "found no train/ folder", naming neither the link nor the policy on linked folders.
    real = write_tree(tmp_path / "real" / "chest_xray", GOOD_TREE)
    given = tmp_path / "given"
    given.mkdir()
    (given / "chest_xray").symlink_to(real)
    expected = (
        f"{given / 'chest_xray'}: a link to {real}, which holds a train/ folder; a symbolic link to a folder; "
        "links to folders are never walked into (not even with data.follow_links)"
    )
    with pytest.raises(kermany.LayoutError) as info:
        kermany.scan(given)
    assert str(info.value).startswith(expected)
    status = data_cli.main(["prepare", "--name=chest_xray", f"--manual_dir={given}", f"--data_dir={tmp_path / 'tfds'}"])
    assert status == 3
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("effnet-data prepare:")]
    assert len(err) == 1 and err[0].startswith(f"effnet-data prepare: {expected}")
    assert not (tmp_path / "tfds" / "chest_xray").exists()
    assert kermany.scan(given / "chest_xray").files["train"]  # the link named itself is read as named


def test_a_folder_tasks_train_link_that_leads_nowhere_is_named(tmp_path):
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "train").symlink_to(tmp_path / "gone")
    with pytest.raises(
        ValueError, match=r"no train/ folder \(.*/task/train is a link to .*/gone, which is no folder\)"
    ):
        folders.class_names({"manual_dir": str(tmp_path / "task")})


def _write_png(path, seed=0) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 36), dtype=np.uint8)).save(path, format="PNG")
    return str(path)


def test_globs_never_follow_linked_folders_into_loops(tmp_path):
    scans = tmp_path / "scans"
    (scans / "sub").mkdir(parents=True)
    for rel in ("a.png", "sub/b.png", ".hidden.png"):
        _write_png(scans / rel)
    os.symlink("..", scans / "sub" / "up")
    os.symlink(scans, scans / "self")
    assert expand_inputs([f"{scans}/**/*.png"]) == [f"{scans}/a.png", f"{scans}/sub/b.png"]
    assert expand_inputs([f"{scans}/**"]) == [f"{scans}/a.png", f"{scans}/sub/b.png"]


# --- links that loop or lead nowhere among the images ---------------------------------------------


def _prepare(raw, data_dir, **kw):
    from effnet_jax.data import prepare

    return prepare.ensure_prepared(
        prepare.BuilderFactory(name="chest_xray", manual_dir=str(raw), data_dir=str(data_dir), max_size=36, **kw)
    )


@pytest.fixture
def linked_tree(tmp_path):
    root = fx.write_tree(tmp_path / "chest_xray", fx.GOOD_TREE)
    os.symlink("IM-0800-0001.jpeg", root / "train/NORMAL/IM-0800-0001.jpeg")  # a link to itself
    os.symlink(tmp_path / "gone.jpeg", root / "train/PNEUMONIA/person800_virus_1.jpeg")  # dangling
    return root


def test_link_loop_and_dangling_link_stop_preparation_naming_both(linked_tree, tmp_path):
    with pytest.raises(imaging.BadImageError) as e:
        _prepare(linked_tree, tmp_path / "tfds")
    assert "IM-0800-0001.jpeg: cannot read (a link that loops or leads nowhere)" in str(e.value)
    assert "person800_virus_1.jpeg: cannot read (a link that loops or leads nowhere)" in str(e.value)


def test_skip_policy_skips_link_loop_and_dangling_link(linked_tree, tmp_path):
    builder = _prepare(linked_tree, tmp_path / "tfds", on_bad_image="skip")
    assert builder.info.splits["train"].num_examples == sum(fx.GOOD_COUNTS["train"])
    skipped = builder.info.metadata["skipped"]
    assert len(skipped) == 2 and all("loops or leads nowhere" in s for s in skipped)


def test_data_clean_lists_links_as_unreadable_instead_of_crashing(linked_tree, tmp_path):
    import json

    from effnet_jax.cli import data as data_cli

    out = tmp_path / "clean"
    assert data_cli.main(["clean", f"--data_dir={linked_tree}", f"--out={out}", "--no_progress"]) == 0
    excluded = json.loads((out / "cleaning.json").read_text())["excluded"]
    reasons = {e["file"]: e["reason"] for e in excluded}
    assert reasons["train/NORMAL/IM-0800-0001.jpeg"] == "unreadable"
    assert reasons["train/PNEUMONIA/person800_virus_1.jpeg"] == "unreadable"


# --- training data a run cannot learn from --------------------------------------------------------


@pytest.fixture(scope="module")
def empty_normal(tmp_path_factory):
    """A chest_xray tree whose train/NORMAL/ is empty."""
    tree = {k: v for k, v in fx.GOOD_TREE.items() if not k.startswith("train/NORMAL/")}
    tree["train/NORMAL/"] = None
    return fx.write_tree(tmp_path_factory.mktemp("raw") / "chest_xray", tree)


def _xray_config(raw, data_dir, **overrides):
    return resume_config(
        **{
            "data.name": "chest_xray",
            "data.manual_dir": str(raw),
            "data.data_dir": str(data_dir),
            "data.max_size": 36,
            **overrides,
        }
    )


def test_a_training_split_with_an_empty_class_is_refused_naming_the_folder(empty_normal, tmp_path):
    with pytest.raises(
        loop.TrainingDataError,
        match=r"the train split has no NORMAL examples \(the NORMAL folder\(s\) "
        rf"under {empty_normal}/train/\)",
    ):
        loop.train_and_evaluate(_xray_config(empty_normal, tmp_path / "tfds"), str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_validation_split_with_an_empty_class_is_a_warning(caplog):
    info = {"class_names": ["NORMAL", "PNEUMONIA"], "class_counts": [0, 3]}
    with caplog.at_level("WARNING", logger="effnet_jax.train"):
        loop._check_classes(resume_config(), "validation", info)
    assert "the validation split has no NORMAL examples" in caplog.text and "undefined" in caplog.text


def test_a_batch_larger_than_the_training_split_is_refused(tmp_path):
    raw = fx.write_tree(tmp_path / "chest_xray", fx.GOOD_TREE)  # 11 training images, some carved to validation
    with pytest.raises(
        loop.TrainingDataError,
        match=r"config.batch_size=16 is larger than the training split \(\d+ "
        r"examples of data.name='chest_xray'",
    ):
        loop.train_and_evaluate(_xray_config(raw, tmp_path / "tfds", batch_size=16), str(tmp_path / "run"))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}


@pytest.mark.parametrize(
    "command",
    [["effnet_jax.cli.train", "--config=configs/debug.py"], ["effnet_jax.cli.data", "prepare", "--name=chest_xray"]],
)
def test_a_missing_class_folder_is_one_line_with_exit_status_3(command, tmp_path):
    raw = fx.write_tree(
        tmp_path / "chest_xray", {k: v for k, v in fx.GOOD_TREE.items() if not k.startswith("val/PNEUMONIA")}
    )
    flag = "--config.data.manual_dir" if "train" in command[0] else "--manual_dir"
    data_dir = "--config.data.data_dir" if "train" in command[0] else "--data_dir"
    args = [sys.executable, "-m", *command, f"{flag}={raw}", f"{data_dir}={tmp_path / 'tfds'}"]
    if "train" in command[0]:
        args.append(f"--workdir={tmp_path / 'run'}")
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == errors.EXIT_INPUT, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith(f"{raw}/val/PNEUMONIA: missing class folder (every split needs NORMAL/ and PNEUMONIA/)")
    )
    json.dumps(proc.stderr)  # plain text


# --- external folders: read as preparation reads them ---------------------------------------------


def test_external_folder_files_are_checked_and_read_as_preparation_reads_them(tmp_path):
    # Before: the pipeline opened external files with every Pillow plugin and no budget: a DICOM was
    # an UnidentifiedImageError traceback, a 16-bit PNG came out white, a 20000 x 20000 PNG a
    # DecompressionBombError traceback, none naming the file.
    plain = crafted.grey_jpeg("L", (600, 600))
    assert external.checked_image(plain, "a.jpeg", 512) is plain  # decoded by the pipeline as before
    scan = open(write_dicom(tmp_path / "x.dcm", radiograph()), "rb").read()
    assert Image.open(io.BytesIO(external.checked_image(scan, "x.dcm", 512))).size == (50, 60)
    ramp = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (64, 1))  # 12-bit values in a 16-bit PNG
    out = io.BytesIO()
    Image.fromarray(ramp).save(out, "PNG")
    stored = np.asarray(Image.open(io.BytesIO(external.checked_image(out.getvalue(), "deep.png", 512))))
    assert stored[:, 0].max() < 8 and stored[:, -1].min() > 247  # stretched, not clipped to white
    with pytest.raises(external.ExternalDataError, match=r"^bomb.png: refused as a decompression bomb"):
        external.checked_image(crafted.grey_png(20000, 20000, header_only=True), "bomb.png", 512)
    # The pipeline decodes with the plugins that checked the file, no other (a PPM here).
    out = io.BytesIO()
    Image.new("L", (8, 8)).save(out, "PPM")
    with pytest.raises(Image.UnidentifiedImageError):
        transforms.decode_gray(out.getvalue(), 8)


def _noisy_jpeg(size=(256, 256), **kwargs) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, size[::-1], dtype=np.uint8)).save(out, "JPEG", **kwargs)
    return out.getvalue()


def _noisy_png(size=(64, 64)) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, size[::-1], dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def _scan_data(data: bytes) -> int:
    """Where the entropy-coded data of a baseline JPEG's (only) scan starts."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")


def _corrupt_files() -> dict[str, bytes]:
    """Files whose header Pillow reads and every check passes, but whose pixel data does not decode."""
    j, p = _noisy_jpeg(), _noisy_png()
    at, idat = _scan_data(j), p.index(b"IDAT") + 4
    flipped = bytearray(p)
    flipped[idat + 10] ^= 0xFF  # inside the zlib stream: its checksum no longer matches
    return {
        "truncated.jpeg": j[: at + (len(j) - at) // 2],  # cut mid-scan
        "garbage.jpeg": j[: at + 50] + b"\xff\xc8" * 8 + j[at + 50 :],  # a marker no decoder knows, mid-scan
        "truncated.png": p[: idat + 100],  # cut mid-IDAT
        "badzlib.png": bytes(flipped),
    }


CORRUPT = _corrupt_files()


def _data_config(tmp_path, **keys):
    c = config_lib.default_data_config()
    c.name, c.data_dir = "chest_xray", str(tmp_path / "tfds")
    for key, value in keys.items():
        setattr(c, key, value)
    return c


def _one_line_starting(error: BaseException, start: str) -> None:
    assert str(error).startswith(start) and "\n" not in str(error), str(error)


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_an_external_image_corrupt_past_its_header_is_a_bad_image_naming_the_file(tmp_path, name):
    # Before: external.checked_image passed the file on (its header checked out), and the pipeline's
    # decode raised OSError "image file is truncated" / "broken data stream": a traceback naming no file.
    ext = write_tree(tmp_path / "ext", {"NORMAL/a.jpeg": jpeg(1), f"PNEUMONIA/{name}": CORRUPT[name]})
    path = str(ext / "PNEUMONIA" / name)
    for c, split in [
        (_data_config(tmp_path, external=(str(ext),)), "external"),
        (_data_config(tmp_path), f"folder:{ext}"),
    ]:
        with pytest.raises(imaging.BadImageError, match="corrupt or truncated image") as refusal:
            eval_pass(c, split)  # effnet-train's external split; effnet-eval --split=folder:PATH
        _one_line_starting(refusal.value, f"{path}: corrupt or truncated image (")
    # effnet-predict on the folder: an error record naming the file (decoded whole, as preparation does).
    with pytest.raises(ImageReadError, match="corrupt or truncated image") as refusal:
        Preprocessor(16, (0.5,) * 3, (0.5,) * 3)(path)
    _one_line_starting(refusal.value, f"{path}: ")


def _external(tmp_path):
    root = tmp_path / "site"
    png = lambda seed: encode(xray(seed, size=(40, 40)), "PNG")  # noqa: E731
    write_tree(root, {"NORMAL/a.png": png(1), "NORMAL/b.png": png(2), "PNEUMONIA/c.png": png(3)})
    return root


def test_an_external_image_removed_after_the_scan_is_one_line_naming_it(tmp_path):
    # The read raised FileNotFoundError: a traceback out of effnet-eval or training.
    root = _external(tmp_path)
    reader = sources.reader(tiny_config().data, f"folder:{root}")
    os.remove(root / "NORMAL" / "b.png")
    with pytest.raises(external.ExternalDataError) as caught:
        reader.read_image(0, 1)
    assert str(caught.value).startswith(f"{root}/NORMAL/b.png: cannot read (No such file or directory)")
    assert one_line(caught.value)[1] == str(caught.value)


def test_files_an_external_folder_does_not_read_are_said(tmp_path, caplog):
    # A DICOM export without an extension, a GIF and a sub-folder were left out without a word.
    root = _external(tmp_path)
    write_tree(
        root, {"NORMAL/IM0001": b"DICM", "NORMAL/x.gif": b"GIF89a", "PNEUMONIA/sub/d.png": b"", "NORMAL/.DS_Store": b""}
    )
    config = tiny_config()
    with caplog.at_level(logging.WARNING, logger="effnet_jax.data.external"):
        meta, _ = external.scan(config.data, f"folder:{root}")
    assert list(meta.file_names) == ["NORMAL/a.png", "NORMAL/b.png", "PNEUMONIA/c.png"]
    (said,) = [r.getMessage() for r in caplog.records if "not read" in r.getMessage()]
    assert said.startswith(f"external folder {root}: 3 entries not read") and said.endswith("IM0001, x.gif, sub/")


# --- file names drawn into figures ----------------------------------------------------------------


_ODD_NAMES = ["IM-0777-\udcff\udcfe.jpeg", "IM-0778-$\\sqrt{$.jpeg", "IM-0779-\x1b[2J.jpeg"]


@pytest.mark.parametrize("name", _ODD_NAMES, ids=["not-utf8", "mathtext", "escape-code"])
def test_the_report_sample_grid_draws_any_file_name_as_text(tmp_path, name):
    # matplotlib raised TypeError on a name that is not UTF-8 and ParseSyntaxException on '$\sqrt{$'.
    inventory = type("Inventory", (), {"samples": {"NORMAL": [(f"train/NORMAL/{name}", np.zeros((8, 8), np.uint8))]}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph 27 missing from font": the escape code drawn raw
        figures.samples(inventory, tmp_path / "samples.png")
    assert (tmp_path / "samples.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("name", _ODD_NAMES, ids=["not-utf8", "mathtext", "escape-code"])
def test_a_grad_cam_panel_draws_any_file_name_as_text(tmp_path, name):
    image = np.zeros((16, 16, 3), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradcam.save_panel(image, np.ones((16, 16)), tmp_path / "panel.png", 0.7, "PNEUMONIA", 0.5, name=name)
    assert (tmp_path / "panel.png").read_bytes().startswith(b"\x89PNG")


# --- exclusion lists and patient patterns ---------------------------------------------------------


_F = exclusions.FORMAT


@pytest.mark.parametrize(
    "name, content, why",
    [
        ("a.json", {"format": _F, "excluded": [{"file": 5, "reason": "x"}]}, "entry 0 is"),
        ("a.json", {"format": _F, "excluded": 5}, '"excluded" is 5'),
        ("a.json", {"format": _F, "excluded": [{"file": "a.png", "reason": "x"}]}, "entry 0: 'a.png': expected"),
        ("a.json", '{{"format": "{}", "excluded": {}}}'.format(_F, "[" * 50000 + "]" * 50000), "nested too deeply"),
        ("a.csv", b"file,reason\ntrain/A/\xff.png,x\n", "UTF-8"),
        ("a.csv", "file,reason\ntrain/A/" + "a" * 200000 + ",x\n", "not a readable CSV"),
    ],
    ids=["file-not-text", "excluded-not-a-list", "short-key", "deep-json", "not-utf8", "huge-csv-field"],
)
def test_a_malformed_exclusion_list_is_one_line_naming_the_key(name, content, why, tmp_path):
    path = tmp_path / name
    if isinstance(content, dict):
        content = json.dumps(content)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError) as caught:
        exclusions.read(str(path))
    status, message = one_line(caught.value)  # None (a traceback) before
    assert message.startswith(f"data.exclude_list={str(path)!r}: ") and why in message
    assert len(message) < 400


def test_a_huge_exclusion_list_is_refused_from_its_size(tmp_path):
    path = tmp_path / "list.json"
    with open(path, "wb") as f:
        f.truncate(exclusions.MAX_LIST_BYTES + 1)  # sparse: costs nothing to make, GBs to read whole
    with pytest.raises(exclusions.ExclusionListError, match=r"not a regular file of at most"):
        exclusions.read(str(path))


def test_a_csv_exclusion_list_is_read_a_row_at_a_time_and_bounded_in_entries(tmp_path, monkeypatch):
    # 64 MiB of one-character rows took 22 s and 2.4 GB (33 M empty rows: a MemoryError at 5.6 GB).
    monkeypatch.setattr(exclusions, "MAX_ENTRIES", 1000)
    path = tmp_path / "list.csv"
    path.write_text("file,reason\n\n" + "".join(f"train/NORMAL/{i}.jpeg,dup\n" for i in range(1000)))
    assert len(exclusions.read(path)) == 1000  # a blank line is skipped, as before
    path.write_text("file,reason\n" + "a/b/c,r\n" * 1001)
    with pytest.raises(exclusions.ExclusionListError, match=r"more than 1,000 entries"):
        exclusions.read(path)
    path.write_text("file,reason," + ",".join(f"c{i}" for i in range(2000)) + "\n")
    with pytest.raises(exclusions.ExclusionListError, match=r"CSV header \['file', 'reason', 'c0', "):
        exclusions.read(path)
    path.write_text("file,reason\ntrain/NORMAL/a.jpeg,dup" + "," * 100_000 + "\n")
    with pytest.raises(exclusions.ExclusionListError, match=r"line 2: 100,002 fields, more than the header's 2"):
        exclusions.read(path)


def test_a_json_exclusion_list_is_held_to_the_budget_for_json(tmp_path, monkeypatch):
    # 64 MiB of '{},' parsed into 1.6 GB of dicts before the first entry was refused.
    monkeypatch.setenv(limits.ENV_VAR, "1M")  # JSON at most 32 KiB
    path = tmp_path / "list.json"
    path.write_text(json.dumps({"format": exclusions.FORMAT, "excluded": [{}] * 20_000}))
    with pytest.raises(exclusions.ExclusionListError, match=r"at most 32,768 bytes \(a JSON list: the decoded-size"):
        exclusions.read(path)
    path.write_text(json.dumps({"format": exclusions.FORMAT, "excluded": [{"file": "train/A/x.png", "reason": "r"}]}))
    assert exclusions.read(path) == {"train/A/x.png": "r"}


def test_an_exclusion_list_naming_paths_outside_the_folder_only_names_keys(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("file,reason\n../../../etc/passwd,evil\n")
    assert exclusions.read(path) == {"../etc/passwd": "evil"}  # a key no listed file has; nothing is opened


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(a|aa)+$", r"(?:\w+_)+x", r"((ab)*c)*"])
def test_a_patient_pattern_that_backtracks_exponentially_is_refused(pattern):
    # (a+)+$ searched in 'aaaa...aB' took 22 s at 28 letters, doubling with each one more.
    with pytest.raises(ValueError, match=r"^data\.patient_id_pattern=.*exponential time") as caught:
        folders.patient_of("aaB.png", "A", pattern)  # a short name: the test never hangs, fixed or not
    assert one_line(caught.value)[0] == 2


def test_safe_patient_patterns_still_work_and_names_are_searched_in_their_first_255_characters():
    kermany = r"^(?P<patient>person\d+|(?:[A-Za-z0-9]+-)?IM-\d+)"
    assert folders.patient_of("NORMAL2-IM-1427-0001.jpeg", "NORMAL", kermany) == "NORMAL2-IM-1427"
    assert folders.patient_of("person12_virus_3.jpeg", "A", r"^(?P<patient>[^_]+)_") == "person12"
    assert folders.patient_of("x" * 300 + "_p7.png", "A", r"_(?P<patient>p\d+)") == "A/" + "x" * 300 + "_p7"


# --- the PneumoniaMNIST npz and its download ------------------------------------------------------


def _mnist(raw, tmp_path, follow_links=False):
    factory = prepare.BuilderFactory(
        name="pneumonia_mnist",
        manual_dir=str(raw),
        data_dir=str(tmp_path / "tfds"),
        mnist_size=28,
        follow_links=follow_links,
    )
    return prepare.ensure_prepared(factory)


def test_a_pneumoniamnist_npz_linked_out_of_manual_dir_is_refused_unless_follow_links(tmp_path):
    # Before: read wherever the link led (a file found in the folder, not one the user named).
    outside = tmp_path / "elsewhere" / "pneumoniamnist.npz"
    fx.write_mnist_npz(outside)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "pneumoniamnist.npz").symlink_to(outside)
    with pytest.raises(ValueError) as info:
        _mnist(raw, tmp_path)
    assert str(info.value) == (
        f"{raw / 'pneumoniamnist.npz'}: a link to {outside}, outside the folder {raw} it was found in; not read "
        f"(set data.follow_links=True (effnet-data: --follow_links) to follow links wherever they point)"
    )
    builder = _mnist(raw, tmp_path, follow_links=True)
    assert builder.info.splits["train"].num_examples == 12


def test_a_medmnist_npz_declaring_more_than_the_budget_is_refused_before_reading(tmp_path):
    from effnet_jax.data.builders.pneumonia_mnist import PneumoniaMnist

    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = z.compress(bytes(1 << 24)) + z.flush(zlib.Z_FULL_FLUSH)
    payload = payload * 48 + z.flush()  # 768 MiB of zeros
    path = crafted.raw_zip(
        tmp_path / "pneumoniamnist.npz", [("train_images.npy", zipfile.ZIP_DEFLATED, payload, 0, 3 << 28)]
    )
    with pytest.raises(ValueError) as info:
        PneumoniaMnist._load(path, 28)
    crafted.refused_by_budget(info.value, path)


def test_a_pneumoniamnist_npz_of_bzip2_members_is_refused_before_they_inflate(tmp_path):
    # numpy reads the member through zipfile, which inflates a bzip2 chunk whole: a member of 1.5 GB of
    # zeros declaring 600 kB took 3.2 GB.
    source = tmp_path / "plain.npz"
    write_mnist_npz(source, size=28)
    path = tmp_path / "pneumoniamnist_28.npz"
    with zipfile.ZipFile(source) as plain, zipfile.ZipFile(path, "w", zipfile.ZIP_BZIP2) as packed:
        for name in plain.namelist():
            packed.writestr(name, plain.read(name))
    with pytest.raises(ValueError, match=r"train_images\.npy is encrypted or compressed with zip method 12"):
        pneumonia_mnist.PneumoniaMnist._load(str(path), 28)
    assert set(pneumonia_mnist.PneumoniaMnist._load(str(source), 28)) == {"train", "val", "test"}


def _npz_with_member(tmp_path, name: str, member: bytes):
    """A MedMNIST npz at 28 px whose member ``name`` is replaced by the bytes ``member``."""
    source = tmp_path / "plain.npz"
    write_mnist_npz(source, size=28)
    path = tmp_path / "pneumoniamnist_28.npz"
    with zipfile.ZipFile(source) as plain, zipfile.ZipFile(path, "w") as edited:
        for member_name in plain.namelist():
            edited.writestr(member_name, member if member_name == name else plain.read(member_name))
    return path


def test_a_pneumoniamnist_array_declaring_more_than_its_member_holds_is_refused_before_numpy_allocates_it(tmp_path):
    # Before: numpy allocated the declared 1e9 x 28 x 28 array (a MemoryError traceback from effnet-data prepare).
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10**9, 28, 28)})
    path = _npz_with_member(tmp_path, "train_images.npy", b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + b"\x00" * 64)
    with pytest.raises(ValueError) as refusal:
        pneumonia_mnist.PneumoniaMnist._load(str(path), 28)
    assert str(refusal.value) == (
        f"{path}: train_images.npy declares a uint8[1000000000, 28, 28] array of 784,000,000,000 bytes but holds 64"
    )


def test_a_pneumoniamnist_array_of_python_objects_is_refused_naming_the_file(tmp_path):
    # Before: numpy's "Object arrays cannot be loaded when allow_pickle=False", naming no file.
    member = io.BytesIO()
    np.save(member, np.array([1, "x"], dtype=object), allow_pickle=True)
    path = _npz_with_member(tmp_path, "train_labels.npy", member.getvalue())
    with pytest.raises(ValueError) as refusal:
        pneumonia_mnist.PneumoniaMnist._load(str(path), 28)
    assert str(refusal.value) == (
        f"{path}: train_labels.npy holds Python objects (dtype object); a MedMNIST array holds numbers"
    )


@pytest.mark.parametrize("plant", ["symlink", "hardlink", "fifo"])
def test_the_pneumoniamnist_download_is_never_written_through_a_planted_partial_file(tmp_path, monkeypatch, plant):
    # Before: open(partial, "wb") truncated and overwrote the link's target (or a hard link's other name).
    victim = victim_file(tmp_path)
    folder = tmp_path / "downloads"
    folder.mkdir()
    partial = folder / "pneumoniamnist.partial"
    {"symlink": lambda: partial.symlink_to(victim), "hardlink": lambda: os.link(victim, partial)}.get(
        plant, lambda: os.mkfifo(partial)
    )()
    fetched = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: fetched.append(a) or pytest.fail("fetched"))
    with pytest.raises(UnsafeOutputError, match=f"^{partial}: "):
        pneumonia_mnist._download(28, folder)
    assert victim.read_text() == VICTIM_TEXT and os.path.lexists(partial) and not fetched


def test_pneumoniamnist_is_never_downloaded_through_a_planted_downloads_link(tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "tfds").mkdir()
    (tmp_path / "tfds" / "downloads").symlink_to(outside)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("fetched"))
    with pytest.raises(UnsafeOutputError, match=f"^{tmp_path / 'tfds' / 'downloads'}: is a symbolic link"):
        _mnist(tmp_path / "no_npz_here", tmp_path)
    assert not list(outside.iterdir())


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_a_full_disk_during_the_download_is_named_as_the_disk_not_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: _Response(b"x" * (3 << 20)))

    class _Full(io.BufferedWriter):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    real = pneumonia_mnist.open_output
    monkeypatch.setattr(pneumonia_mnist, "open_output", lambda path, mode: _Full(real(path, mode)))
    folder = tmp_path / "downloads"
    partial = folder / "pneumoniamnist.partial"
    with pytest.raises(RuntimeError) as raised:
        pneumonia_mnist._download(28, folder)
    assert str(raised.value) == f"{partial}: cannot write the download there (No space left on device)"
    assert not partial.exists()


def test_a_network_failure_is_still_offline(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise urllib.error.URLError("no route")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(RuntimeError, match=r"could not download .*Offline\? Download pneumoniamnist\.npz"):
        pneumonia_mnist._download(28, tmp_path / "downloads")
    assert not (tmp_path / "downloads" / "pneumoniamnist.partial").exists()


# --- folder splits and exclusion lists: names escaped, read back ----------------------------------

HOSTILE = "a\n\x1b[31mEVIL.png"
ESCAPED = "a\\n\\x1b[31mEVIL.png"


def _folder_config(tmp_path, **keys):
    c = config_lib.default_data_config()
    c.name, c.data_dir = "chest_xray", str(tmp_path / "tfds")
    for key, value in keys.items():
        setattr(c, key, value)
    return c


def _folder(tmp_path):
    return write_tree(tmp_path / "ext", {"NORMAL/a.jpeg": jpeg(1), "PNEUMONIA/b.jpeg": jpeg(2)})


@pytest.mark.parametrize(
    "plant",
    [
        lambda path: path.write_bytes(b"not an image"),
        lambda path: os.symlink("/etc/hostname", path),
        lambda path: os.symlink("/nowhere\n\x1b[32mTARGET", path),
    ],
    ids=["not-an-image", "link-out", "link-target-with-escapes"],
)
def test_a_folder_splits_bad_file_with_control_characters_is_named_on_one_escaped_line(tmp_path, plant):
    # Before: effnet-eval --split=folder:PATH printed the name as it is: the newline split the
    # one-line error, and the escape code reached the terminal.
    root = _folder(tmp_path)
    plant(root / "NORMAL" / HOSTILE)
    with pytest.raises(external.ExternalDataError) as refusal:
        eval_pass(_folder_config(tmp_path), f"folder:{root}")
    message = str(refusal.value)
    assert message.startswith(f"{root / 'NORMAL' / ESCAPED}: ")
    assert "\n" not in message and "\x1b" not in message


def test_a_folder_splits_file_corrupt_past_its_header_is_named_on_one_escaped_line(tmp_path):
    # The pipeline's decode names the file by the reader's record name: it was the raw path.
    root = _folder(tmp_path)
    whole = jpeg(3)
    (root / "PNEUMONIA" / HOSTILE).write_bytes(whole[: len(whole) // 2])
    with pytest.raises(imaging.BadImageError, match="corrupt or truncated image") as refusal:
        eval_pass(_folder_config(tmp_path), f"folder:{root}")
    message = str(refusal.value)
    assert message.startswith(f"{root / 'PNEUMONIA' / ESCAPED}: corrupt or truncated image (")
    assert "\n" not in message and "\x1b" not in message


def test_a_skipped_bad_file_is_logged_on_one_escaped_line(tmp_path, caplog):
    root = _folder(tmp_path)
    os.symlink("/etc/hostname", root / "NORMAL" / HOSTILE)  # a link out: left out when scanned
    c = _folder_config(tmp_path, on_bad_image="skip")
    with caplog.at_level("WARNING", logger="effnet_jax.data.external"):
        external.scan(c, f"folder:{root}")
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and ESCAPED in skipped[0]
    assert "\n" not in skipped[0] and "\x1b" not in skipped[0]


def test_a_csv_exclusion_list_leaves_out_the_files_whose_names_are_not_utf8(tmp_path):
    # `effnet-data clean` writes a name's bytes that are not UTF-8 as \xNN in exclusions.csv; read
    # back, the entry named a key no file has, and preparing with the CSV list kept the file.
    name = os.fsdecode(b"bad\xff\xfe.jpeg")  # as os.scandir lists it: the bytes as surrogates
    key = f"train/NORMAL/{name}"
    entries = [{"file": key, "reason": "unreadable", "detail": "x"}]
    as_csv = exclusions.write(tmp_path / "out" / "exclusions.csv", entries)
    as_json = exclusions.write(tmp_path / "out" / "exclusions.json", entries)
    assert "train/NORMAL/bad\\xff\\xfe.jpeg" in as_csv.read_text()  # written escaped, one line
    assert key in exclusions.read(as_json)
    assert key in exclusions.read(as_csv)
