"""End to end on the session's tiny trained run: effnet-eval and effnet-predict (with Grad-CAM), the Run value."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from effnet_jax.data import pipeline
from effnet_jax.inference.prediction_output import COLUMNS
from effnet_jax.metrics import classification as metrics_lib
from effnet_jax.runs import code_version

pytestmark = pytest.mark.slow  # reads a really trained run and runs the CLIs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


STEP = 6  # the latest checkpoint of the session's shared run


@pytest.fixture(scope="module")
def workdir(straight_run):
    # Only the plumbing is under test here, not learning: the session's tiny run (tests/run_fixtures.py).
    return straight_run["workdir"]


def cli(module, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def evaluated(workdir):
    # No --split: the run's held-out split, test for the synthetic data.
    proc = cli("effnet_jax.cli.evaluate", f"--workdir={workdir}", "--checkpoint=latest")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out_dir = os.path.join(workdir, "eval", f"test_{STEP}")
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return proc, out_dir, json.load(f)


def test_eval_cli_reports_both_thresholds_and_where_it_wrote(evaluated):
    proc, out_dir, report = evaluated
    assert f"Wrote {out_dir}/" in proc.stdout
    assert "No --split: scoring test, the data's test split" in proc.stdout
    # In a pipe: whole progress lines, no bar redraws or escape codes.
    assert "\r" not in proc.stdout + proc.stderr and "\x1b" not in proc.stdout + proc.stderr
    assert "effnet_jax.inference: eval test: 16/16 img (100%)" in proc.stderr
    assert "t=0.5" in proc.stdout and "val. Youden" in proc.stdout and "synthetic" in proc.stdout
    assert report["step"] == STEP and report["split"] == "test" and report["synthetic"] is True
    assert report["num_examples"] == 16 and sum(report["class_counts"]) == 16
    for name in ("confusion_matrix_0.5.png", "confusion_matrix_youden.png", "roc.png", "reliability.png"):
        with Image.open(os.path.join(out_dir, name)) as im:
            assert im.format == "PNG"
    with open(os.path.join(out_dir, "predictions.csv")) as f:
        assert len(f.read().strip().splitlines()) == 1 + 16
    # Bootstrap intervals (synthetic data has no patient ids: by image), in the JSON and the table.
    ci = report["metrics"]["operating"]["ci95"]
    assert ci["resamples"] == 2000 and ci["resampled_by"] == "image" and ci["groups"] == 16
    assert "by image, 16 groups" in proc.stdout and "uncalibrated (no calibration.json)" in proc.stdout
    assert report["temperature"] == 1.0
    # effnet-eval refreshes the model card.
    with open(os.path.join(os.path.dirname(os.path.dirname(out_dir)), "MODEL_CARD.md")) as f:
        card = f.read()
    assert "Not a medical device" in card and f"| test | {STEP} | operating |" in card


@pytest.fixture(scope="module")
def run(workdir):
    """The run at its latest checkpoint, opened once: its variables are read once for the module."""
    from effnet_jax import runs

    return runs.open(workdir, "latest")


def test_eval_metrics_match_a_fresh_pass_over_the_splits(workdir, evaluated, run):
    from effnet_jax.inference.evaluation import predict_split

    _, _, report = evaluated
    config, model, variables = run.config, run.model(), run.variables()
    size, mean, std = run.input_spec
    args = dict(image_size=size, mean=mean, std=std, batch_size=16, progress=False)
    test = predict_split(model, variables, config.data, "test", **args)
    val = predict_split(model, variables, config.data, "validation", **args)
    threshold = metrics_lib.youden_threshold(val.labels, val.probs)
    assert report["validation_threshold"] == pytest.approx(threshold, abs=1e-7)
    # The synthetic debug config trains on synthetic data without balancing: the prior is train's PNEUMONIA share.
    counts = pipeline.split_info(config.data, "train")["class_counts"]
    assert report["training_prior_threshold"] == pytest.approx(counts[1] / sum(counts))
    for key, t in (
        ("threshold_0.5", 0.5),
        ("threshold_training_prior", report["training_prior_threshold"]),
        ("threshold_validation_youden", threshold),
    ):
        expected = metrics_lib.json_safe(metrics_lib.compute_metrics(test.labels, test.probs, t))
        got = report["metrics"][key]
        assert got["confusion_matrix"] == expected["confusion_matrix"]
        for name in metrics_lib.METRIC_NAMES:
            assert got[name] == pytest.approx(expected[name], abs=1e-6, nan_ok=True)


def test_predict_cli_scores_images_reports_bad_ones_and_writes_gradcam(workdir, evaluated, tmp_path):
    _, _, report = evaluated
    rng = np.random.default_rng(0)
    good = tmp_path / "xray.png"
    Image.fromarray(rng.integers(0, 256, (48, 40), dtype=np.uint8)).save(good)
    rgb = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(rgb)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    cams = tmp_path / "cams"
    proc = cli(
        "effnet_jax.cli.predict",
        f"--workdir={workdir}",
        "--checkpoint=latest",
        f"--gradcam={cams}",
        "--batch_size=2",
        str(good),
        str(corrupt),
        str(rgb),
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # one input failed
    assert f"cannot read {corrupt}" in proc.stderr
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [r["file"] for r in lines] == [str(good), str(corrupt), str(rgb)]
    assert "error" in lines[1] and str(corrupt) in lines[1]["error"]
    for record in (lines[0], lines[2]):
        assert 0.0 <= record["prob_pneumonia"] <= 1.0
        # The default is the run's training prior, which effnet-eval reported as well.
        assert record["threshold"] == pytest.approx(report["training_prior_threshold"])
        assert record["label"] == ("PNEUMONIA" if record["prob_pneumonia"] >= record["threshold"] else "NORMAL")
        assert os.path.dirname(record["gradcam"]) == str(cams)
    with Image.open(lines[0]["gradcam"]) as im:
        assert im.format == "PNG" and im.size == (40, 48)
    assert sorted(os.listdir(cams)) == [
        "photo.gradcam.png",
        "photo.gradcam_panel.png",
        "xray.gradcam.png",
        "xray.gradcam_panel.png",
    ]
    assert lines[0]["gradcam_panel"] == str(cams / "xray.gradcam_panel.png")


def test_tta_evaluation_of_the_validation_split_goes_to_its_own_directory(workdir, evaluated, run):
    from effnet_jax.inference.evaluation import evaluate_checkpoint
    from effnet_jax.inference.thresholds import find_validation_threshold

    report = evaluate_checkpoint(run, split="validation", tta="flip", progress=False)
    assert report.out_dir == os.path.join(workdir, "eval", f"validation_{STEP}_tta-flip")
    assert report.tta == "flip" and "split being reported" in report.threshold_source
    with open(os.path.join(report.out_dir, "metrics.json")) as f:
        assert json.load(f) == json.loads(json.dumps(metrics_lib.json_safe(report.to_json())))
    # predict (no TTA) keeps using the threshold stored by the plain evaluation.
    _, out_dir, plain = evaluated
    assert find_validation_threshold(run) == (
        plain["validation_threshold"],
        os.path.join(out_dir, "metrics.json"),
    )


def test_predict_cli_searches_folders_and_globs_writes_csv_and_warns_of_synthetic_data(workdir, evaluated, tmp_path):
    _, _, report = evaluated
    rng = np.random.default_rng(1)
    scans, loose = tmp_path / "scans", tmp_path / "loose"
    (scans / "ward_2").mkdir(parents=True)
    loose.mkdir()
    for path in (scans / "b.png", scans / "ward_2" / "a.png", loose / "c.jpeg", loose / "d.png"):
        Image.fromarray(rng.integers(0, 256, (40, 36), dtype=np.uint8)).save(path)
    (scans / "notes.txt").write_text("not an image, and not taken from a folder")
    out = tmp_path / "preds.csv"
    proc = cli(
        "effnet_jax.cli.predict",
        f"--workdir={workdir}",
        "--checkpoint=latest",
        f"--out={out}",
        str(scans),
        f"{loose}/*.jpeg",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"effnet-predict: warning: {workdir} was trained on synthetic data" in proc.stderr
    assert proc.stdout.strip() == f"effnet-predict: wrote 3 row(s) (0 unreadable) to {out}"
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS and rows[0]["temperature"] == "1.0"  # the fields --help names
    assert [r["file"] for r in rows] == [str(scans / "b.png"), str(scans / "ward_2" / "a.png"), str(loose / "c.jpeg")]
    threshold = report["training_prior_threshold"]
    for r in rows:
        assert float(r["threshold"]) == pytest.approx(threshold) and r["error"] == "" and r["gradcam"] == ""
        assert r["label"] == ("PNEUMONIA" if float(r["prob_pneumonia"]) >= float(r["threshold"]) else "NORMAL")


def test_predictor_scores_paths_arrays_and_pil_images_alike(run, tmp_path):
    from effnet_jax.inference.prediction import Predictor

    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (44, 52), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(gray).save(path)
    predictor = Predictor(run, batch_size=8)
    assert predictor.data == "synthetic" and predictor.synthetic
    items = [str(path), gray, np.repeat(gray[..., None], 3, axis=2), Image.fromarray(gray), Image.open(path)]
    records = list(predictor.predict(items))
    assert [r["file"] for r in records] == [str(path), "<array 1>", "<array 2>", "<image 3>", "<image 4>"]
    assert len({r["prob_pneumonia"] for r in records}) == 1  # identical, not merely close
    assert len({r["label"] for r in records}) == 1
    (bad,) = predictor.predict([np.zeros((3, 3), np.float64)])
    assert bad == {"file": "<array 0>", "error": bad["error"]} and "expected a uint8 array" in bad["error"]


def test_temperature_fitted_by_eval_is_applied_by_eval_and_predict_without_changing_labels(
    workdir, evaluated, run, tmp_path
):
    from effnet_jax.inference.evaluation import calibrate_checkpoint, evaluate_checkpoint
    from effnet_jax.inference.prediction import Predictor
    from effnet_jax.metrics import calibration as cal
    from effnet_jax.runs import calibration as calibration_file

    _, plain_dir, plain = evaluated
    try:
        report = evaluate_checkpoint(
            run,
            split="test",
            calibrate="validation",
            out_dir=str(tmp_path / "calibrated"),
            progress=False,
            bootstrap_resamples=200,
        )
        fitted = calibration_file.read_calibration(run.layout)
        assert (fitted.fitted_on, fitted.step, fitted.n, fitted.tta) == ("validation", STEP, 16, "none")
        t = fitted.temperature
        assert report.temperature == t != 1.0 and "fitted on validation" in report.calibration
        # Probabilities: exactly the map of the uncalibrated ones, which are the plain run's.
        with open(os.path.join(plain_dir, "predictions.csv")) as f:
            plain_rows = [line.split(",") for line in f.read().strip().splitlines()[1:]]
        with open(os.path.join(report.out_dir, "predictions.csv")) as f:
            rows = [line.split(",") for line in f.read().strip().splitlines()[1:]]
        raw = np.array([float(r[3]) for r in plain_rows])
        assert [r[4] for r in rows] == [r[3] for r in plain_rows]
        # Thresholds mapped with T: every confusion matrix (so sensitivity, specificity) is unchanged.
        for key, m in report.metrics.items():
            assert m["confusion_matrix"] == plain["metrics"][key]["confusion_matrix"], key
            assert m["recall"] == pytest.approx(plain["metrics"][key]["recall"], nan_ok=True)
        assert report.metrics["operating"]["threshold"] == cal.calibrate_threshold(plain["operating_threshold"], t)
        assert report.operating_threshold == plain["operating_threshold"]  # recorded uncalibrated
        assert report.uncalibrated["ece"] == pytest.approx(plain["metrics"]["threshold_0.5"]["ece"])
        expected = metrics_lib.compute_metrics(
            [int(r[2]) for r in plain_rows], cal.calibrate_probs(raw, t), 0.5
        )  # from the 6-decimal CSV: equal to about 1e-6
        assert report.metrics["threshold_0.5"]["brier"] == pytest.approx(expected["brier"], abs=1e-5)
        assert report.metrics["operating"]["ci95"]["resamples"] == 200

        # effnet-predict applies the same T to the same checkpoint, exactly, and maps its threshold.
        image = tmp_path / "xray.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40), dtype=np.uint8)).save(image)
        # Batches of 16, as eval's: the same compiled program serves both (no compile here).
        predictor = Predictor(run.with_calibration(fitted), batch_size=16)
        assert predictor.temperature == t and "fitted on validation" in predictor.calibration
        assert predictor.threshold == cal.calibrate_threshold(plain["operating_threshold"], t)
        (calibrated,) = predictor.predict([str(image)])
        predictor.temperature = 1.0
        (uncalibrated,) = predictor.predict([str(image)])
        assert calibrated["temperature"] == t and uncalibrated["temperature"] == 1.0
        assert calibrated["prob_pneumonia"] == cal.calibrate_probs([uncalibrated["prob_pneumonia"]], t)[0]
        assert calibrated["prob_pneumonia"] != uncalibrated["prob_pneumonia"]
        # effnet-train's config.calibrate path fits the same temperature on the same split.
        assert calibrate_checkpoint(run, "validation", progress=False) == fitted
    finally:
        path = run.layout.calibration
        if os.path.exists(path):
            os.remove(path)


def test_results_record_reads_every_number_from_the_report_and_refuses_a_second_id(workdir, evaluated, tmp_path):
    # `effnet-results record`: the results record of an evaluated run, appended once.
    _, out_dir, report = evaluated
    out = tmp_path / "recipes.jsonl"
    flags = [
        f"--out={out}",
        "--split=test",
        "--checkpoint=latest",
        "--id=tiny",
        "--name=the tiny run",
        "--kept=no",
        "--run_command=effnet-train --config=configs/debug.py",
        "--run_config=configs/debug.py",
        "--commit=abc1234",
    ]
    proc = cli("effnet_jax.cli.results", "record", workdir, *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = out.read_text().splitlines()
    record = json.loads(line)
    assert json.loads(proc.stdout.splitlines()[-1]) == record

    with open(os.path.join(out_dir, "predictions.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    labels = np.array([int(r["label"]) for r in rows])
    probs = np.array([float(r["prob_pneumonia"]) for r in rows])
    operating = report["metrics"]["operating"]
    called = probs >= report["operating_threshold"]
    scored = record["test"]
    assert scored["images"] == len(rows)
    assert scored["images_correct"] == int(np.sum(called == labels))
    assert scored["auc"] == round(operating["auc"], 3)
    assert scored["sensitivity"] == round(float(np.mean(called[labels == 1])), 3)
    assert scored["specificity"] == round(float(np.mean(~called[labels == 0])), 3)
    assert scored["auc_ci"] == [round(v, 3) for v in operating["ci95"]["auc"]]
    assert scored["at_05"]["accuracy"] == round(report["metrics"]["threshold_0.5"]["accuracy"], 3)
    assert set(scored["heldout"]) == {"accuracy", "sensitivity", "specificity"}
    # What the run directory knows: its machine line, its validation AUC at that step.
    metrics = [json.loads(r) for r in open(os.path.join(workdir, "metrics.jsonl")) if r.strip()]
    val_auc = [m["auc"] for m in metrics if m["split"] == "validation" and m["step"] == STEP][-1]
    assert record["validation"] == {"auc": round(val_auc, 3)}
    assert record["machine"] == [m["machine"] for m in metrics if m["split"] == "run"][-1]
    config = json.loads(open(os.path.join(workdir, "config.json")).read())
    assert config["model"]["name"] == "efficientnet_test"
    assert record["model"] == f"Test {config['image_size']} px"  # the tables' short name
    assert (record["id"], record["kept"], record["commit"], record["runs"]) == ("tiny", "no", "abc1234", 1)

    again = cli("effnet_jax.cli.results", "record", workdir, *flags)
    assert again.returncode == 1
    assert f"{out}:1: a record with id 'tiny' exists already" in again.stderr
    assert out.read_text().splitlines() == [line]

    # Without --commit, the record names the code the run says it trained with.
    (code,) = {m["code"] for m in metrics if m["split"] == "run"}
    assert code == code_version.describe()
    flags = [f for f in flags if not f.startswith(("--commit", "--id"))] + ["--id=tiny-2"]
    proc = cli("effnet_jax.cli.results", "record", workdir, *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.read_text().splitlines()[-1])["commit"] == code


def test_results_record_of_a_tta_report_refits_the_operating_point_on_its_views(workdir, run, tmp_path):
    # `effnet-results record --tta=flip`: the flip report, its threshold fitted on the flipped views.
    from effnet_jax.inference.evaluation import evaluate_checkpoint
    from effnet_jax.metrics.classification import sensitivity_threshold
    from effnet_jax.reporting import recipe_record

    provenance = recipe_record.Provenance(config="c.py", command="cmd", commit="abc", machine="cpu")
    kwargs = dict(record_id="r", name="n", kept="no", tables=("tried",), provenance=provenance, split="test")
    report = evaluate_checkpoint(run, split="test", tta="flip", progress=False)
    record = recipe_record.recipe_record(run, tta="flip", **kwargs)
    with open(os.path.join(report.out_dir, "predictions.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    labels = np.array([int(r["label"]) for r in rows])
    probs = np.array([float(r["prob_pneumonia"]) for r in rows])
    threshold = sensitivity_threshold(labels, probs, float(run.config.operating_sensitivity))
    scored = record["test"]
    assert record["tta"] == "flip" and scored["threshold"] == round(threshold, 3)
    assert scored["images_correct"] == int(np.sum((probs >= threshold) == labels))
    assert "auc_ci" not in scored
    with pytest.raises(FileNotFoundError, match=r"test_\d+_tta-crops@0.875/metrics.json.*--tta=crops@0.875 first"):
        recipe_record.recipe_record(run, tta="crops", **kwargs)
