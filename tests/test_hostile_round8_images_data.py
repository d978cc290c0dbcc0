"""Hostile inputs, round 8: images, DICOM files, data folders and zips, effnet-serve uploads and config values.

Each case failed before the fix beside it (a traceback, an HTTP 500, a class folder silently read
as empty, a message on several lines or naming the wrong key) and is asserted here as the
documented behaviour (docs/untrusted-inputs.md).
"""

import io
import os
import shutil
import warnings
import zipfile

import numpy as np
import pydicom
import pytest
from data_fixtures import GOOD_TREE, jpeg, write_tree, zip_tree
from dicom_fixtures import radiograph, write_dicom
from helpers import tiny_config
from PIL import Image

from effnet_jax.cli import data as data_cli
from effnet_jax.data import dicom, imaging, kermany
from effnet_jax.train.config import validate_config


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), 7).save(out, format="PNG")
    return out.getvalue()


# --- images and DICOM files -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [(100_000, 1), (1, 70_000)])
def test_an_image_longer_than_a_stored_jpeg_holds_is_a_bad_image_naming_it(size):
    # Pillow's JPEG writer raised OSError ("broken data stream") on saving the stored copy: a traceback
    # in effnet-predict and data preparation, an HTTP 500 in effnet-serve.
    with pytest.raises(imaging.BadImageError) as caught:
        imaging.load_for_storage(_png(*size), "scans/strip.png", 512)
    message = str(caught.value)
    assert message.startswith("scans/strip.png: an image of ") and "65,500 pixels a side" in message
    assert "\n" not in message
    # Long, but storable once resized: still read.
    _, (height, width) = imaging.load_for_storage(_png(60_000, 2), "ok.png", 512)
    assert (height, width) == (2, 60_000)


def _patched(path, old: bytes, new: bytes) -> bytes:
    data = open(path, "rb").read()
    assert data.count(old) == 1
    return data.replace(old, new)


def test_a_dicom_of_a_transfer_syntax_no_one_knows_is_one_line(tmp_path):
    # pydicom's UID.is_compressed raised "UID is not a transfer syntax" (ValueError): a traceback.
    path = write_dicom(tmp_path / "x.dcm", radiograph())
    data = _patched(path, b"1.2.840.10008.1.2.1\0", b"1.2.3.4.5.6.7.8.9.0\0")
    with pytest.raises(
        imaging.BadImageError, match=r"^scan\.dcm: DICOM TransferSyntaxUID '1\.2\.3\.4\.5\.6\.7\.8\.9\.0' "
    ):
        imaging.decode_file(data, "scan.dcm")


@pytest.mark.parametrize("keyword", ["FloatPixelData", "DoubleFloatPixelData"])
def test_a_dicom_of_floating_point_pixels_is_named_as_such(tmp_path, keyword):
    # Was "DICOM file without pixel data (a report or structured document?)".
    path = write_dicom(tmp_path / "x.dcm", radiograph())
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.BitsAllocated = 32 if keyword == "FloatPixelData" else 64
    setattr(ds, keyword, np.ones(60 * 50, np.float32 if keyword == "FloatPixelData" else np.float64).tobytes())
    ds.save_as(str(tmp_path / "f.dcm"))
    with pytest.raises(dicom.DicomError, match=rf"^map\.dcm: DICOM {keyword} \(floating-point pixels\) is not a "):
        dicom.read_gray(open(tmp_path / "f.dcm", "rb").read(), "map.dcm")


def test_dicom_pixel_data_longer_than_its_one_frame_reads_that_frame(tmp_path):
    # pydicom decoded the extra bytes as a second frame, then the windowing failed on the (2, H, W)
    # array with "bad DICOM modality/VOI LUT (could not broadcast ...)".
    image = radiograph()
    single = write_dicom(tmp_path / "one.dcm", image)
    padded = write_dicom(tmp_path / "two.dcm", image, pixel_data=image.tobytes() * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the excess frames
        read = dicom.read_gray(open(padded, "rb").read(), "two.dcm")
    np.testing.assert_array_equal(read, dicom.read_gray(open(single, "rb").read(), "one.dcm"))


# --- data folders and zips ------------------------------------------------------------------------


def _tree(root):
    return write_tree(root, GOOD_TREE)


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


def test_a_zip_member_listed_twice_is_a_listed_problem_not_read(tmp_path):
    # zipfile reads the last copy of a name: which file was prepared was the archive's choice.
    name = "chest_xray/train/NORMAL/IM-0001-0001.jpeg"
    path = zip_tree(_tree(tmp_path / "data"), tmp_path / "x.zip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr(name, jpeg(99))
    layout = kermany.scan(path)
    assert f"{path}:{name}: listed 2 times in the zip (which copy is the image is ambiguous); not read" in (
        layout.problems
    )
    assert name not in [rel for entries in layout.files.values() for _, rel in entries]


def test_a_zip_whose_names_are_all_refused_says_so(tmp_path):
    path = tmp_path / "windows.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for rel, content in GOOD_TREE.items():
            zf.writestr("chest_xray\\" + rel.replace("/", "\\"), content())
    with pytest.raises(kermany.LayoutError, match=r"absolute or non-canonical member name\(s\) not read, e\.g\. "):
        kermany.scan(path)


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


@pytest.mark.parametrize("command", ["report", "clean"])
def test_effnet_data_out_that_is_a_file_is_one_line_before_the_scan(tmp_path, capsys, command):
    # mkdir raised FileExistsError after the whole scan: a traceback.
    out = tmp_path / "out"
    out.write_text("a file")
    status = data_cli.main([command, f"--data_dir={_tree(tmp_path / 'data')}", f"--out={out}", "--no_progress"])
    assert status == 2
    assert capsys.readouterr().err.strip() == f"effnet-data {command}: --out={out}: exists and is not a folder"


def test_preparing_into_a_data_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    # os.makedirs of the preparation lock raised FileExistsError: a traceback.
    target = tmp_path / "tfds"
    target.write_text("a file")
    status = data_cli.main(
        ["prepare", "--name=chest_xray", f"--manual_dir={_tree(tmp_path / 'data')}", f"--data_dir={target}"]
    )
    assert status == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(f"data.data_dir='{target}': not a folder; expected the folder to prepare the data set into")
    )


@pytest.mark.parametrize("max_size", [7, 16385, 10**8])
def test_effnet_data_prepare_holds_max_size_to_the_config_keys_bounds(tmp_path, capsys, max_size):
    # --max_size=100000000 was taken (the config key data.max_size is 8 to 16384).
    status = data_cli.main(
        [
            "prepare",
            "--name=chest_xray",
            f"--manual_dir={_tree(tmp_path / 'data')}",
            f"--data_dir={tmp_path / 'tfds'}",
            f"--max_size={max_size}",
        ]
    )
    assert status == 2
    assert f"data.max_size={max_size}: expected an image side from 8 to 16384 pixels" in capsys.readouterr().err
    assert not (tmp_path / "tfds").exists()


# --- config values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value",
    [
        ("optimizer.b1", float("nan")),
        ("optimizer.b2", 2.0),
        ("optimizer.momentum", float("nan")),
        ("optimizer.rmsprop_decay", 1.0),
        ("optimizer.eps", -1.0),
        ("optimizer.weight_decay", float("inf")),
        ("optimizer.grad_clip_norm", -1.0),
        ("optimizer.layer_decay", 0.0),
        ("schedule.min_lr_ratio", float("nan")),
        ("schedule.decay_epochs", 0.0),
        ("schedule.decay_rate", float("-inf")),
        ("early_stopping.min_delta", float("nan")),
        ("early_stopping.patience", -1),
        ("seed", -1),
        ("seed", 2**64),
        ("data.split_seed", -1),
        ("num_devices", -3),
    ],
)
def test_optimizer_schedule_and_seed_values_are_refused_naming_the_key(key, value):
    # Each was taken: a NaN b1 or infinite weight decay trained to a NaN loss blamed on the learning rate,
    # a NaN min_lr_ratio failed after training with a traceback, a negative seed failed in numpy after the
    # compile, a negative grad_clip_norm or patience changed the run silently.
    config = tiny_config(**{key: value})
    with pytest.raises(ValueError, match=rf"^config\.{key.replace('.', chr(92) + '.')}=") as caught:
        validate_config(config)
    assert "\n" not in str(caught.value)


def test_the_shipped_optimizer_values_still_pass():
    validate_config(tiny_config())
    validate_config(tiny_config(**{"optimizer.momentum": 0.0, "optimizer.b1": 0.0, "schedule.min_lr_ratio": 1.0}))


# --- effnet-serve uploads -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from export_fixtures import export_tiny
    from fastapi.testclient import TestClient

    from effnet_jax import serving
    from effnet_jax.server import Settings, create_app

    model = serving.load(export_tiny(tmp_path_factory.mktemp("export")))
    with TestClient(create_app(model, Settings(max_batch=2, max_wait_ms=1))) as test_client:
        yield test_client


def test_uploads_no_check_foresaw_are_422_naming_the_file_not_500(client, tmp_path, monkeypatch):
    from effnet_jax.serving.model import ExportedModel

    # An image longer than a stored JPEG holds, and a DICOM of a made-up transfer syntax: both were 500s.
    dcm = _patched(write_dicom(tmp_path / "x.dcm", radiograph()), b"1.2.840.10008.1.2.1\0", b"1.2.3.4.5.6.7.8.9.0\0")
    for name, data, expected in [
        ("strip.png", _png(100_000, 1), "strip.png: an image of 100000x1 pixels"),
        ("scan.dcm", dcm, "scan.dcm: DICOM TransferSyntaxUID '1.2.3.4.5.6.7.8.9.0' is not a transfer syntax"),
    ]:
        answer = client.post("/v1/predict", files=[("file", (name, data))])
        assert answer.status_code == 422 and answer.json()["error"].startswith(expected)
    # A decoder failing in a way no check foresaw: the upload is unprocessable, the server stays up.
    monkeypatch.setattr(ExportedModel, "prepare_bytes", lambda *a: (_ for _ in ()).throw(RuntimeError("decoder bug")))
    answer = client.post("/v1/predict", files=[("file", ("ok.jpeg", jpeg(1)))])
    assert answer.status_code == 422
    assert answer.json() == {"error": "ok.jpeg: cannot be read as an image (RuntimeError)"}
    monkeypatch.undo()
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.post("/v1/predict", files=[("file", ("ok.jpeg", jpeg(1)))]).status_code == 200
