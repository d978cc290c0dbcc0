"""A task of three classes from a folder of class folders, end to end (issue #33).

One tiny run (two steps, 32 px) on a 3-class folder of PNGs made here; its evaluation,
effnet-predict, effnet-export and the exported model each give one probability per class,
named by the folder's classes.
"""

import csv
import json
import pathlib

import numpy as np
import pytest
from helpers import machinery_config, session_compilation_cache
from PIL import Image

from effnet_jax import runs, serving
from effnet_jax.data import folders, pipeline, splits
from effnet_jax.inference.evaluation import evaluate_checkpoint
from effnet_jax.inference.export import export_run
from effnet_jax.inference.prediction import Predictor
from effnet_jax.inference.prediction_output import PredictionWriter
from effnet_jax.metrics import calibration, multiclass
from effnet_jax.train import loop

CLASSES = ("CAT", "DOG", "EMU")


def make_folder(root, per_split=(("train", 8), ("test", 3))):
    """PNGs of 24 x 24 grey levels whose brightness tells the class apart."""
    rng = np.random.default_rng(0)
    for split, n in per_split:
        for k, cls in enumerate(CLASSES):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = (rng.integers(0, 60, (24, 24)) + 80 * k).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"p{i}_{split}_{i}.png")
    return root


@pytest.fixture(scope="module")
def three_class_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("nclass")
    data = make_folder(base / "data")
    config = machinery_config(
        **{
            "data.name": "folder",
            "data.manual_dir": str(data),
            "data.data_dir": str(base / "tfds"),
            "num_train_steps": 2,
            "eval_every_steps": 2,
            "checkpoint_every_steps": 2,
            "num_devices": 1,
        }
    )
    workdir = str(base / "run")
    with session_compilation_cache(tmp_path_factory):
        loop.train_and_evaluate(config, workdir)
    return {"workdir": workdir, "data": data, "base": base}


def test_folder_classes_are_the_sorted_class_folders_or_the_rules_classes(tmp_path):
    data = make_folder(tmp_path / "d", per_split=(("train", 1),))
    assert folders.class_names({"manual_dir": str(data)}) == CLASSES
    rules = (("CAT/*", "FELINE"), ("DOG/p0_*", "CANINE"), ("EMU/*", "BIRD"))
    config = {"manual_dir": str(data), "class_from_name": rules}
    assert folders.class_names(config) == ("BIRD", "CANINE", "FELINE")
    layout = folders.scan(config)
    assert sorted(c for c, _ in layout.files["train"]) == ["BIRD", "CANINE", "FELINE"]
    (data / "train" / "bad name").mkdir()
    with pytest.raises(ValueError, match="'bad name' is not allowed"):
        folders.class_names({"manual_dir": str(data)})


def test_class_metrics_are_one_vs_rest_with_macro_and_weighted_averages():
    labels = np.array([0, 0, 1, 1, 1, 2])
    probs = np.array(
        [[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]]
    )
    m = multiclass.compute_metrics(labels, probs, CLASSES)
    assert m["confusion_matrix"] == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    # CAT one vs rest: P(CAT) of its two images (0.7, 0.3) against the others' four.
    assert m["per_class"]["CAT"]["auc"] == pytest.approx(7 / 8)
    assert m["per_class"]["DOG"]["sensitivity"] == pytest.approx(2 / 3)
    assert m["per_class"]["DOG"]["specificity"] == pytest.approx(2 / 3)
    assert m["per_class"]["EMU"]["auc"] == 1.0
    aucs = [m["per_class"][c]["auc"] for c in CLASSES]
    assert m["auc"] == m["macro"]["auc"] == pytest.approx(np.mean(aucs))
    assert m["weighted"]["auc"] == pytest.approx(np.average(aucs, weights=[2, 3, 1]))
    # DOG against CAT on their five images: P(DOG) / (P(CAT) + P(DOG)) ranks 5 of 6 pairs right.
    pair = m["pairs"]["CAT_vs_DOG"]
    assert (pair["n"], pair["auc"], pair["accuracy"]) == (5, pytest.approx(5 / 6), pytest.approx(3 / 5))


def test_one_temperature_calibrates_every_class_and_keeps_the_most_probable():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    logits = 5.0 * (rng.normal(size=(200, 3)) + np.eye(3)[labels])  # right often, sure always
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    fitted = calibration.fit_calibration(labels, probs, "validation", 1)
    assert fitted.temperature > 1.0 and fitted.ece_after < fitted.ece_before
    calibrated = calibration.calibrate_probs(probs, fitted.temperature)
    assert (calibrated.argmax(axis=1) == probs.argmax(axis=1)).all()
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0)


def test_a_patient_with_images_of_two_classes_stays_on_one_side_of_the_split():
    labels = np.array([1, 2, 1, 2, 1, 2, 0, 0, 0, 0] * 3)
    groups = np.array([f"p{i // 2}" for i in range(30)])  # each patient: one image of two classes
    bucket = splits.stratified_group_split(labels, groups, (0.5, 0.5), seed=3)
    for g in np.unique(groups):
        assert len(set(bucket[groups == g])) == 1, g


def test_a_three_class_run_records_its_classes_and_scores_each_one_vs_rest(three_class_run, tmp_path):
    run = runs.open(three_class_run["workdir"])
    assert tuple(run.config.data.class_names) == CLASSES
    info = pipeline.split_info(run.config.data, "test")
    assert info["class_names"] == list(CLASSES) and info["class_counts"] == [3, 3, 3]
    report = evaluate_checkpoint(run, split="test", progress=False, out_dir=str(tmp_path))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    found = saved["metrics"]["argmax"]
    assert saved["class_names"] == list(CLASSES) and report.num_examples == 9
    aucs = [found["per_class"][c]["auc"] for c in CLASSES]
    assert all(0.0 <= a <= 1.0 for a in aucs)
    assert found["macro"]["auc"] == pytest.approx(np.mean(aucs))
    assert np.asarray(found["confusion_matrix"]).sum(axis=1).tolist() == [3, 3, 3]
    assert set(found["pairs"]) == {"CAT_vs_DOG", "CAT_vs_EMU", "DOG_vs_EMU"}
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and [k for k in rows[0] if k.startswith("prob_")] == [f"prob_{c}" for c in CLASSES]
    # The trainer's own evaluation logged the macro AUC and each class's.
    last = [r for r in run.metrics if r.get("split") == "validation"][-1]
    assert {"auc", "auc_CAT", "auc_DOG", "auc_EMU"} <= set(last)


def test_predict_export_and_serving_give_one_probability_per_class(three_class_run, tmp_path):
    images = sorted(str(p) for p in (three_class_run["data"] / "test").rglob("*.png"))[:4]
    records = list(Predictor(three_class_run["workdir"]).predict(images))
    for r in records:
        assert list(r["probs"]) == list(CLASSES) and sum(r["probs"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["label"] == max(r["probs"], key=r["probs"].get) and "threshold" not in r
    with PredictionWriter(str(tmp_path / "out.csv"), CLASSES) as writer:
        for r in records:
            writer.write(r)
    with open(tmp_path / "out.csv", newline="") as f:
        assert next(csv.reader(f))[:4] == ["file", "prob_CAT", "prob_DOG", "prob_EMU"]

    meta = export_run(runs.open(three_class_run["workdir"]), str(tmp_path / "export"), platforms=("cpu",))
    assert meta["class_names"] == list(CLASSES) and meta["positive_class"] is None
    model = serving.load(str(tmp_path / "export"))
    served = list(model.predict_files(images))
    for mine, theirs in zip(records, served):
        assert list(theirs["probs"]) == list(CLASSES) and theirs["label"] == mine["label"]
        np.testing.assert_allclose(list(theirs["probs"].values()), list(mine["probs"].values()), atol=1e-4)

    # effnet-serve's API answers with the same records (and the model's class names, no threshold).
    from fastapi.testclient import TestClient

    from effnet_jax.server import Settings, create_app

    with TestClient(create_app(model, Settings(max_batch=4))) as client:
        files = [("file", (p.rsplit("/", 1)[-1], pathlib.Path(p).read_bytes(), "image/png")) for p in images]
        body = client.post("/v1/predict", files=files).json()
    assert body["model"]["class_names"] == list(CLASSES) and body["model"]["threshold"] is None
    for mine, theirs in zip(served, body["records"]):
        assert theirs["label"] == mine["label"]
        np.testing.assert_allclose(list(theirs["probs"].values()), list(mine["probs"].values()), atol=1e-6)


def test_a_three_class_run_is_recorded_as_one_class_against_the_rest(three_class_run):
    # `effnet-results record --negative_class=CAT`: DOG or EMU is the positive, scored 1 - P(CAT).
    from sklearn.metrics import roc_auc_score

    from effnet_jax.metrics.classification import sensitivity_threshold
    from effnet_jax.metrics.held_out import held_out_rule
    from effnet_jax.reporting import recipe_record

    run = runs.open(three_class_run["workdir"])
    evaluate_checkpoint(run, split="test", progress=False)
    provenance = recipe_record.Provenance(config="c.py", command="cmd", commit="abc", machine="cpu")
    kwargs = dict(record_id="r", name="n", kept="no", tables=("tried",), provenance=provenance, split="test")
    with pytest.raises(ValueError, match="more than two classes.*--negative_class"):
        recipe_record.recipe_record(run, **kwargs)
    with pytest.raises(ValueError, match="--negative_class='cat': the report's classes are CAT, DOG, EMU"):
        recipe_record.recipe_record(run, negative_class="cat", **kwargs)

    record = recipe_record.recipe_record(run, negative_class="CAT", **kwargs)
    with open(pathlib.Path(run.layout.eval_report(f"test_{run.step}")).parent / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    labels = np.array([r["label"] != "CAT" for r in rows], np.int64)
    scores = 1.0 - np.array([float(r["prob_CAT"]) for r in rows])
    assert labels.tolist() == [0] * 3 + [1] * 6
    scored = record["test"]
    assert scored["auc"] == round(roc_auc_score(labels, scores), 3)
    threshold = sensitivity_threshold(labels, scores, 0.95)
    assert scored["threshold"] == round(threshold, 3)
    called = scores >= threshold
    assert scored["images_correct"] == int((called == labels).sum()) and scored["images"] == 9
    assert scored["sensitivity"] == round(called[labels == 1].mean(), 3)
    held = held_out_rule(labels, scores, np.random.default_rng(0))
    assert scored["heldout"] == {k: round(v, 3) for k, v in zip(("accuracy", "sensitivity", "specificity"), held)}
    assert "auc_ci" not in scored  # no bootstrap of a view effnet-eval did not score
    last = [r for r in run.metrics if r.get("split") == "validation" and r["step"] == run.step][-1]
    assert record["validation"] == {"auc": round(last["auc_CAT"], 3)}
    assert record["judged_as"] == "CAT against the rest (score 1 - P(CAT))"
