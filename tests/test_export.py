"""effnet-export and effnet_jax.serving: the README's commands, parity with effnet-predict, hostile folders."""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from data_fixtures import SHARED_CHEST_XRAY
from dicom_fixtures import radiograph, write_dicom
from export_fixtures import STEP, make_workdir
from helpers import REPO, tiny_config
from PIL import Image

from effnet_jax import serving
from effnet_jax.inference.prediction_output import COLUMNS
from effnet_jax.serving import bundle


def _images(folder) -> list[str]:
    """Five real X-rays (or, without the shared data, written stand-ins) and a DICOM MONOCHROME1/2 twin."""
    real = SHARED_CHEST_XRAY / "val"
    if real.is_dir():
        paths = [str(p) for cls in ("NORMAL", "PNEUMONIA") for p in sorted((real / cls).iterdir())[:3]][:5]
    else:
        rng = np.random.default_rng(0)
        paths = []
        for i in range(5):
            paths.append(str(folder / f"x{i}.png"))
            Image.fromarray(rng.integers(0, 256, (80 + 7 * i, 64), dtype=np.uint8)).save(paths[-1])
    pixels = radiograph(90, 72)
    paths.append(write_dicom(folder / "mono2.dcm", pixels, window=(2048, 2048), voi_function="LINEAR_EXACT"))
    paths.append(
        write_dicom(
            folder / "mono1.dcm", 4095 - pixels, "MONOCHROME1", window=(2047, 2048), voi_function="LINEAR_EXACT"
        )
    )
    return paths


def _readme_blocks() -> tuple[str, str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Use a trained model\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1), re.search(
        r"```python\n(.*?)```", section, re.S
    ).group(1)


def _substitute(text: str, env: dict) -> str:
    for old, new in env.items():
        text = text.replace(old, new)
    return text


def _run(args, **kw):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The README's effnet-export command run on a small workdir; returns the names its commands use."""
    root = tmp_path_factory.mktemp("export")
    (root / "run").mkdir()
    workdir = make_workdir(root / "run")
    images = _images(root)
    names = {
        "runs/pneumonia": workdir,
        "exported/pneumonia": str(root / "exported"),
        "xray1.jpeg": images[0],
        "scan2.dcm": images[5],
    }
    bash, _ = _readme_blocks()
    export_line, predict_line = [line for line in bash.splitlines() if line.strip()]
    assert export_line.startswith("effnet-export ") and predict_line.startswith("effnet-predict --exported=")
    args = _substitute(export_line, names).split()[1:]
    proc = _run([sys.executable, "-m", "effnet_jax.cli.export", *args])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {names['exported/pneumonia']}/model.json" in proc.stdout
    return {"names": names, "images": images, "workdir": workdir, "out": names["exported/pneumonia"], "bash": bash}


@pytest.fixture(scope="module")
def model(setup):
    return serving.load(setup["out"])


def test_model_json_records_what_the_model_is(setup):
    with open(os.path.join(setup["out"], "model.json")) as f:
        meta = json.load(f)
    assert meta["format"] == bundle.FORMAT and meta["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert meta["input"] == {**meta["input"], "image_size": 32, "dtype": "uint8", "center_crop": 1.0, "max_size": 512}
    # No external data: the operating threshold is the training prior, 44 / 64 PNEUMONIA.
    assert meta["threshold"] == {"value": 44 / 64, "rule": "training_prior"}
    assert meta["temperature"] is None
    assert meta["model"]["variant"] == tiny_config().model.name and meta["model"]["checkpoint_step"] == STEP
    assert meta["model"]["ensemble_members"] == 1
    assert meta["metrics"] == {"validation": {"data": "synthetic", "auc": 0.75, "accuracy": 0.5}}
    assert meta["training"]["data"] == "synthetic" and meta["training"]["train_class_counts"] == [20, 44]
    assert meta["versions"]["jax"] == jax.__version__ and meta["platforms"] == ["cpu", "cuda", "tpu"]
    assert meta["preprocessing"]["mean"] == [0.485, 0.456, 0.406]  # the variant's ImageNet mean
    assert "softmax" in meta["preprocessing"]["in_function"]


def test_exported_probabilities_equal_effnet_predict_for_batches_of_1_and_7(setup, model):
    from effnet_jax import runs
    from effnet_jax.inference.prediction import Predictor

    paths = setup["images"]
    reference = Predictor(runs.open(setup["workdir"], "best"), batch_size=7)
    expected = np.array([r["prob_pneumonia"] for r in reference.predict(paths)])
    assert 0.05 < expected.min() and expected.max() < 0.95 and np.ptp(expected) > 1e-3  # not saturated
    assert model.threshold == reference.threshold and model.class_names == ("NORMAL", "PNEUMONIA")
    batch_7 = [r["prob_pneumonia"] for r in model.predict_files(paths, batch_size=7)]
    np.testing.assert_allclose(batch_7, expected, rtol=0, atol=1e-5)
    batch_1 = model.predict_files(paths[:1], batch_size=1)
    np.testing.assert_allclose([r["prob_pneumonia"] for r in batch_1], expected[:1], rtol=0, atol=1e-5)
    # The MONOCHROME1 DICOM scores as its inverted MONOCHROME2 twin.
    assert batch_7[6] == batch_7[5]
    # Arrays: what effnet-predict gives for the same pixels in a lossless file.
    pixels = np.asarray(Image.open(paths[0]).convert("L"))
    np.testing.assert_allclose(model([pixels]), expected[:1], rtol=0, atol=1e-5)
    rgb = np.repeat(pixels[..., None], 3, axis=2)
    np.testing.assert_array_equal(model([rgb]), model([pixels]))


def test_the_readme_commands_run(setup):
    names = setup["names"]
    bash, python = _readme_blocks()
    predict_line = [line for line in bash.splitlines() if line.strip()][1]
    proc = _run([sys.executable, "-m", "effnet_jax.cli.predict", *_substitute(predict_line, names).split()[1:]])
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["file"] for r in records] == [names["xray1.jpeg"], names["scan2.dcm"]]
    assert all(r["label"] in ("NORMAL", "PNEUMONIA") and r["threshold"] == 44 / 64 for r in records)
    # The Python example, then proof that serving needed no training or model code.
    script = _substitute(python, names) + (
        "\nimport sys\n"
        "print('LOADED', sorted(m for m in ('flax', 'optax', 'orbax', 'grain', 'tensorflow_datasets', "
        "'effnet_jax.models', 'effnet_jax.train') if m in sys.modules))\n"
    )
    proc = _run([sys.executable, "-c", script])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED []" in proc.stdout
    assert abs(float(proc.stdout.split("]")[0].strip("[ ")) - records[0]["prob_pneumonia"]) < 1e-5


def _copy(setup, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(setup["out"], target)
    return target


def _rewrite_json(folder, change):
    meta = json.loads((folder / "model.json").read_text())
    change(meta)
    (folder / "model.json").write_text(json.dumps(meta))


def error(folder) -> str:
    """The one-line ExportedModelError that loading ``folder`` raises."""
    with pytest.raises(serving.ExportedModelError) as info:
        serving.load(str(folder))
    assert "\n" not in str(info.value)
    return str(info.value)


def test_corrupted_or_foreign_folders_are_one_line_naming_the_file(setup, tmp_path):
    assert (
        error(setup["workdir"])
        == f"{setup['workdir']}/model.json: missing; {setup['workdir']} was not written by effnet-export"
    )
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "model.json").write_text('{"architectures": ["BertModel"]}')
    assert error(foreign).startswith(f"{foreign}/model.json: format None, expected 'effnet_jax.exported/1'")

    folder = _copy(setup, tmp_path)
    blob = (folder / "model.stablehlo").read_bytes()
    (folder / "model.stablehlo").write_bytes(blob[: len(blob) // 2])
    assert error(folder).startswith(f"{folder}/model.stablehlo: does not match {folder}/model.json")
    # Garbage whose size and hash model.json agrees with still stops at the deserializer.
    garbage = bytes(range(256)) * 64
    (folder / "model.stablehlo").write_bytes(garbage)

    def point_at_garbage(meta):
        meta["files"]["function"].update(bytes=len(garbage), sha256=bundle.sha256(garbage))

    _rewrite_json(folder, point_at_garbage)
    assert error(folder).startswith(f"{folder}/model.stablehlo: not a serialized jax.export function")

    folder = _copy(setup, tmp_path / "b")
    buffer = __import__("io").BytesIO()
    np.savez(buffer, np.zeros((3, 3), np.float32))
    (folder / "weights.npz").write_bytes(buffer.getvalue())
    _rewrite_json(
        folder,
        lambda m: m["files"]["weights"].update(bytes=len(buffer.getvalue()), sha256=bundle.sha256(buffer.getvalue())),
    )
    assert re.match(rf"{folder}/weights.npz: holds 1 arrays, the function takes \d+$", error(folder))

    folder = _copy(setup, tmp_path / "c")
    _rewrite_json(folder, lambda m: m["threshold"].update(value=1.5))
    assert error(folder) == f"{folder}/model.json: bad value for 'threshold.value': 1.5"
    (folder / "model.json").write_text("{not json")
    assert error(folder).startswith(f"{folder}/model.json: not valid JSON")
    (folder / "model.json").write_bytes(b" " * (bundle.MAX_JSON_BYTES + 1))
    assert "more than the 1048576 an exported model may hold" in error(folder)


def test_bad_images_are_reported_and_the_others_scored(setup, model, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    records = list(model.predict_files([str(bad), setup["images"][0]], threshold=0.0))
    assert records[0] == {"file": str(bad), "error": records[0]["error"]} and records[0]["error"].startswith(str(bad))
    assert records[1]["label"] == "PNEUMONIA" and records[1]["threshold"] == 0.0
    # The fields effnet-predict's records have (effnet-predict --help), in its order.
    assert tuple(records[1]) == COLUMNS[:5] and records[1]["temperature"] == 1.0
    with pytest.raises(serving.ImageInputError, match=r"images\[1\]: shape \(4, 4, 2\)"):
        model([np.zeros((4, 4), np.uint8), np.zeros((4, 4, 2), np.uint8)])
    with pytest.raises(serving.ImageInputError, match=r"images\[0\]: dtype float32"):
        model([np.zeros((4, 4), np.float32)])


def test_a_calibrated_run_divides_the_logits_by_its_temperature(setup, model, tmp_path):
    from effnet_jax import runs
    from effnet_jax.inference.export import export_run

    workdir = tmp_path / "run"
    shutil.copytree(setup["workdir"], workdir)
    # Without the Grad-CAM function (as folders exported before it existed): they load and score alike.
    uncalibrated = export_run(runs.open(str(workdir)), str(tmp_path / "plain"), platforms=("cpu",), gradcam=False)
    step = uncalibrated["model"]["checkpoint_step"]
    fitted = {"temperature": 2.0, "fitted_on": "validation", "step": step, "ece_before": 0.2, "ece_after": 0.1, "n": 16}
    (workdir / "calibration.json").write_text(json.dumps({**fitted, "step": step + 1}))
    meta = export_run(runs.open(str(workdir)), str(tmp_path / "other_step"), platforms=("cpu",), gradcam=False)
    assert meta["temperature"] is None and "fitted at step" in meta["calibration"]  # another checkpoint's T
    (workdir / "calibration.json").write_text(json.dumps(fitted))
    meta = export_run(runs.open(str(workdir)), str(tmp_path / "out"), platforms=("cpu",), gradcam=False)
    assert meta["temperature"] == 2.0 and "gradcam" not in meta["files"] and meta["platforms"] == ["cpu"]
    # The threshold goes through the same map as the probabilities: labels do not change.
    t0 = uncalibrated["threshold"]["value"]
    assert meta["threshold"]["value"] == pytest.approx(1 / (1 + np.exp(-np.log(t0 / (1 - t0)) / 2)))
    calibrated = serving.load(str(tmp_path / "out"))
    assert not calibrated.has_gradcam and sorted(os.listdir(tmp_path / "out")) == [
        "SHA256SUMS",
        "model.json",
        "model.stablehlo",
        "weights.npz",
    ]
    inputs = np.stack([model.prepare_file(setup["images"][0])])
    p = float(model.run(inputs)[0])
    expected = 1 / (1 + np.exp(-np.log(p / (1 - p)) / 2))  # softmax of z / 2 = sigmoid((z1 - z0) / 2)
    np.testing.assert_allclose(calibrated.run(inputs), [expected], rtol=0, atol=1e-6)
    (workdir / "calibration.json").write_text(json.dumps({**fitted, "temperature": -1}))
    with pytest.raises(ValueError, match=r"calibration.json: temperature=-1.0: expected a number from 0.01 to 100"):
        export_run(runs.open(str(workdir)), str(tmp_path / "out"), platforms=("cpu",))


def test_an_edited_or_poisoned_export_is_refused_at_load_in_one_line(setup, tmp_path):
    """Swapped class names, an edited model.json, NaN weights, no SHA256SUMS, a hand-made custom_call."""
    import io

    from jax import export as jax_export

    folder = _copy(setup, tmp_path / "swapped")
    _rewrite_json(folder, lambda m: m.update(class_names=["PNEUMONIA", "NORMAL"], positive_class="NORMAL"))
    # Valid names (a task may name its classes), but not the ones exported: SHA256SUMS tells.
    assert re.match(rf"{folder}/model.json: SHA-256 \w+\.\.\. is not the one", error(folder))
    folder = _copy(setup, tmp_path / "unsafe_name")
    _rewrite_json(folder, lambda m: m.update(class_names=["NORMAL", "../PNEUMONIA"], positive_class="../PNEUMONIA"))
    assert error(folder) == f"{folder}/model.json: bad value for 'class_names': ['NORMAL', '../PNEUMONIA']"

    folder = _copy(setup, tmp_path / "edited")
    _rewrite_json(folder, lambda m: m["threshold"].update(value=0.01))  # valid, but not what was exported
    assert re.match(
        rf"{folder}/model.json: SHA-256 \w+\.\.\. is not the one {folder}/SHA256SUMS records", error(folder)
    )
    (folder / "SHA256SUMS").unlink()
    assert error(folder).startswith(f"{folder}/SHA256SUMS: missing, so {folder}/model.json cannot be checked")

    folder = _copy(setup, tmp_path / "nan")
    with np.load(folder / "weights.npz") as archive:
        arrays = [archive[f"arr_{i}"] for i in range(len(archive.files))]
    arrays[-1] = arrays[-1].copy()
    arrays[-1].flat[0] = np.nan
    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    (folder / "weights.npz").write_bytes(buffer.getvalue())
    _rewrite_json(
        folder,
        lambda m: m["files"]["weights"].update(bytes=len(buffer.getvalue()), sha256=bundle.sha256(buffer.getvalue())),
    )
    last = len(arrays) - 1
    assert error(folder) == f"{folder}/weights.npz: arr_{last}.npy holds 1 non-finite value(s) (NaN or inf)"

    def evil(weights, images):
        out = jax.ShapeDtypeStruct((images.shape[0],), np.float32)
        return jax.ffi.ffi_call("evil_target", out)(images)

    (batch,) = jax_export.symbolic_shape("batch")
    exported = jax_export.export(
        jax.jit(evil), platforms=("cpu",), disabled_checks=[jax_export.DisabledSafetyCheck.custom_call("evil_target")]
    )(jax.ShapeDtypeStruct((3,), np.float32), jax.ShapeDtypeStruct((batch, 32, 32), np.uint8))
    blob = bytes(exported.serialize())
    folder = _copy(setup, tmp_path / "custom_call")
    (folder / "model.stablehlo").write_bytes(blob)
    _rewrite_json(folder, lambda m: m["files"]["function"].update(bytes=len(blob), sha256=bundle.sha256(blob)))
    assert error(folder) == (
        f"{folder}/model.stablehlo: calls custom_call evil_target, which effnet-export never emits; "
        "refusing to run a hand-made module"
    )


def test_an_equalized_run_exports_its_levels_and_scores_as_effnet_predict(setup, model, tmp_path):
    """data.equalize='histogram' travels to model.json; the exported model spreads levels as effnet-predict does."""
    from effnet_jax import runs
    from effnet_jax.data import transforms
    from effnet_jax.inference.export import export_run
    from effnet_jax.inference.prediction import Predictor, Preprocessor

    config = tiny_config()
    config.data.equalize = "histogram"
    (tmp_path / "run").mkdir()
    run = runs.open(make_workdir(tmp_path / "run", config))
    meta = export_run(run, str(tmp_path / "out"), platforms=("cpu",), gradcam=False)
    assert meta["input"]["equalize"] == "histogram"
    equalized = serving.load(str(tmp_path / "out"))
    paths = setup["images"]
    # The model input is the plain view with its levels spread: host steps, then Pillow's equalize.
    plain = model.prepare_file(paths[0])
    np.testing.assert_array_equal(equalized.prepare_file(paths[0]), transforms.equalize(plain, "histogram"))
    assert not np.array_equal(plain, equalized.prepare_file(paths[0]))
    prep = Preprocessor.for_run(run)
    assert prep.equalize == "histogram"
    np.testing.assert_array_equal(
        prep(paths[0])[0], transforms.Normalizer(prep.mean, prep.std)(transforms.equalize(plain, "histogram"))
    )
    expected = np.array([r["prob_pneumonia"] for r in Predictor(run, batch_size=7).predict(paths)])
    np.testing.assert_allclose([r["prob_pneumonia"] for r in equalized.predict_files(paths)], expected, atol=1e-5)
    # Same weights, levels as stored: other scores (the key is not decoration).
    assert np.abs(np.array([r["prob_pneumonia"] for r in model.predict_files(paths)]) - expected).max() > 1e-4

    config.data.equalize = "clahe"  # a run folder from elsewhere: refused, naming the key
    (tmp_path / "bad_run").mkdir()
    with pytest.raises(ValueError, match=r"^data.equalize='clahe': expected one of none, histogram$"):
        Preprocessor.for_run(runs.open(make_workdir(tmp_path / "bad_run", config)))

    folder = _copy(setup, tmp_path / "bad_levels")
    _rewrite_json(folder, lambda m: m["input"].update(equalize="clahe"))
    assert error(folder) == f"{folder}/model.json: bad value for 'input.equalize': 'clahe'"
