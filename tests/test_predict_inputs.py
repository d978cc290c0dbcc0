"""effnet-predict without a model: finding the images, the --out file, in-memory inputs, exit codes."""

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from effnet_jax.inference.inputs import InputNotFoundError, expand_inputs
from effnet_jax.inference.prediction import ImageReadError, Preprocessor, _input_names
from effnet_jax.inference.prediction_output import PredictionWriter, output_format

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def tree(tmp_path):
    """scans/{a.png, b.JPEG, notes.txt, .hidden.png, sub/c.jpg, sub/deeper/d.tif, .cache/e.png}, other/f.png."""
    for name in (
        "scans/a.png",
        "scans/b.JPEG",
        "scans/notes.txt",
        "scans/.hidden.png",
        "scans/sub/c.jpg",
        "scans/sub/deeper/d.tif",
        "scans/.cache/e.png",
        "other/f.png",
    ):
        _touch(tmp_path / name)
    return tmp_path


def test_folders_are_searched_recursively_for_images_only(tree):
    s = str(tree / "scans")
    assert expand_inputs([s]) == [f"{s}/a.png", f"{s}/b.JPEG", f"{s}/sub/c.jpg", f"{s}/sub/deeper/d.tif"]


def test_globs_files_and_folders_mix_in_order_each_once(tree):
    s, o = str(tree / "scans"), str(tree / "other")
    got = expand_inputs([f"{o}/*.png", f"{s}/**/*.jpg", f"{s}/notes.txt", f"{s}/sub", f"{s}/a.png", f"{s}/a.png"])
    # A named file is taken whatever its extension; a repeat is scored once.
    assert got == [f"{o}/f.png", f"{s}/sub/c.jpg", f"{s}/notes.txt", f"{s}/sub/deeper/d.tif", f"{s}/a.png"]


def test_a_missing_path_or_empty_pattern_names_itself(tree):
    with pytest.raises(InputNotFoundError, match=r"nope\.png: no such file or folder"):
        expand_inputs([str(tree / "scans"), str(tree / "nope.png")])
    with pytest.raises(InputNotFoundError, match=r"\*\.bmp: the pattern matches no file"):
        expand_inputs([str(tree / "scans" / "*.bmp")])


RECORDS = [
    {"file": "a.png", "prob_pneumonia": 0.8125, "label": "PNEUMONIA", "threshold": 0.5, "temperature": 1.0},
    {"file": "b.png", "error": "b.png: not an image (Pillow recognises no image format in it)"},
    {"file": "c,d.png", "prob_pneumonia": 0.25, "label": "NORMAL", "threshold": 0.5, "temperature": 1.0},
]


def test_csv_rows_carry_every_column(tmp_path):
    path = tmp_path / "preds.CSV"
    with PredictionWriter(str(path)) as writer:
        for r in RECORDS:
            writer.write(r)
    assert path.read_text().splitlines() == [
        "file,prob_pneumonia,label,threshold,temperature,gradcam,gradcam_panel,error",
        "a.png,0.8125,PNEUMONIA,0.5,1.0,,,",
        "b.png,,,,,,,b.png: not an image (Pillow recognises no image format in it)",
        '"c,d.png",0.25,NORMAL,0.5,1.0,,,',
    ]
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert float(rows[0]["prob_pneumonia"]) == 0.8125 and rows[2]["file"] == "c,d.png"


def test_jsonl_rows_are_the_records(tmp_path):
    path = tmp_path / "preds.jsonl"
    with PredictionWriter(str(path)) as writer:
        for r in RECORDS:
            writer.write(r)
    assert [json.loads(line) for line in path.read_text().splitlines()] == RECORDS


def test_out_must_be_csv_or_jsonl():
    assert (output_format("p.csv"), output_format("dir/p.jsonl")) == ("csv", "jsonl")
    with pytest.raises(ValueError, match=r"--out=preds\.json: expected a \.csv or \.jsonl file name"):
        output_format("preds.json")


def test_arrays_pil_images_and_files_of_the_same_pixels_give_the_same_input(tmp_path):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (50, 41), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    path = tmp_path / "x.png"
    Image.fromarray(gray).save(path)
    pre = Preprocessor(image_size=24, mean=(0.5,) * 3, std=(0.25,) * 3, max_size=32)
    expected, _ = pre(str(path))
    for item in (path, gray, rgb, Image.fromarray(gray), Image.fromarray(rgb), Image.fromarray(rgb).convert("RGBA")):
        got, shown = pre(item, "item")
        np.testing.assert_array_equal(got, expected)
        assert shown.size == (41, 50)  # the file at its own size, where Grad-CAM overlays are drawn


def test_bad_in_memory_inputs_name_themselves():
    pre = Preprocessor(image_size=8, mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(ImageReadError, match=r"<array 1>: expected a uint8 array of H x W or H x W x 3, got float32"):
        pre(np.zeros((4, 4), np.float32), "<array 1>")
    with pytest.raises(ImageReadError, match=r"shape \(4, 4, 2\)"):
        pre(np.zeros((4, 4, 2), np.uint8), "<array 0>")
    with pytest.raises(ImageReadError, match="got list"):
        pre([[0, 1]], "<image 2>")
    assert _input_names(["a.png", np.zeros((2, 2), np.uint8), Image.new("L", (2, 2))]) == [
        "a.png",
        "<array 1>",
        "<image 2>",
    ]


def _predict_cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, "-m", "effnet_jax.cli.predict", *args], cwd=REPO, env=env, capture_output=True, text=True
    )


def test_cli_bad_path_is_one_line_and_exit_3_before_loading_the_run(tree):
    # The workdir holds no run: the input check comes first, so no model is loaded.
    proc = _predict_cli(f"--workdir={tree}", str(tree / "scans"), str(tree / "missing.jpeg"))
    assert proc.returncode == 3
    assert proc.stderr.strip() == f"effnet-predict: error: {tree / 'missing.jpeg'}: no such file or folder"
    assert proc.stdout == ""
    proc = _predict_cli(f"--workdir={tree}", f"--out={tree / 'p.xlsx'}", str(tree / "scans"))
    assert proc.returncode == 2 and proc.stderr.strip().endswith("expected a .csv or .jsonl file name")
