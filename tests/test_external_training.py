"""External validation in a real run: evaluated at every evaluation, picking checkpoints and the operating threshold."""

import json

import pytest
from data_fixtures import jpeg, write_tree
from helpers import hand_made_run, session_compilation_cache, tiny_config
from run_fixtures import resume_config

from effnet_jax import runs
from effnet_jax.inference import thresholds
from effnet_jax.inference.evaluation import evaluate_checkpoint
from effnet_jax.inference.prediction import Predictor
from effnet_jax.runs.metrics_log import read_metrics

pytestmark = pytest.mark.slow  # trains for real: about a CPU-minute


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from effnet_jax.train import train_and_evaluate

    root = tmp_path_factory.mktemp("external_run")
    files = {f"NORMAL/n{i}.jpeg": jpeg(300 + i, size=(48, 40)) for i in range(4)}
    files.update({f"PNEUMONIA/p{i}.jpeg": jpeg(400 + i, size=(48, 40)) for i in range(6)})
    ext = write_tree(root / "ext", files)
    # The shared runs' steps (tests/run_fixtures.py), so the session cache compiles them once.
    config = resume_config(keep_checkpoints=4, select_split="external")
    config.data.external = (str(ext),)
    with session_compilation_cache(tmp_path_factory):
        train_and_evaluate(config, str(root / "run"))
    return str(root / "run"), ext


def test_every_evaluation_scores_validation_and_the_external_folder(run):
    workdir, _ = run
    validation = read_metrics(workdir, "validation")
    external = read_metrics(workdir, "external")
    assert [r["step"] for r in validation] == [3, 6] and [r["step"] for r in external] == [3, 6]
    for record in external:
        assert record["n"] == 10 and record["confusion_matrix"][0][0] + record["confusion_matrix"][0][1] == 4
        assert 0.0 <= record["sensitivity_threshold"] <= 1.0


def test_best_checkpoint_is_chosen_on_the_external_split(run):
    workdir, _ = run
    external = {r["step"]: r["auc"] for r in read_metrics(workdir, "external")}
    best = runs.open(workdir, "best").step
    assert external[best] == max(external.values())


def test_eval_and_predict_use_the_external_operating_threshold(run):
    workdir, ext = run
    stored = {r["step"]: r["sensitivity_threshold"] for r in read_metrics(workdir, "external")}
    latest = runs.open(workdir, "latest")
    report = evaluate_checkpoint(latest, split="external", progress=False)
    assert report.num_examples == 10 and report.class_counts == [4, 6]
    assert report.operating_threshold == stored[6]
    assert report.operating_threshold_rule.startswith("external_sensitivity (sensitivity >= 0.95")
    assert report.metrics["operating"]["recall"] >= 0.95
    with open(f"{report.out_dir}/metrics.json") as f:
        assert json.load(f)["operating_threshold"] == stored[6]
    predictor = Predictor(latest)
    assert predictor.threshold == stored[6]
    folder = evaluate_checkpoint(latest, split=f"folder:{ext}", progress=False)
    assert folder.metrics["threshold_0.5"]["auc"] == report.metrics["threshold_0.5"]["auc"]


def test_without_external_data_the_operating_threshold_is_the_training_prior(run):
    workdir, _ = run
    config = tiny_config().to_dict()
    run = hand_made_run(workdir, config, step=6, train_class_counts=(30, 34), metrics=read_metrics(workdir))
    value, rule = thresholds.operating_threshold(run)
    assert (value, rule) == (34 / 64, "training_prior") == (thresholds.training_prior_threshold(run), rule)
    config["data"]["external"] = ["/nowhere"]
    run = hand_made_run(workdir, config, step=4, train_class_counts=(30, 34), metrics=read_metrics(workdir))
    value, rule = thresholds.operating_threshold(run)  # step 4 was never evaluated
    assert rule == "training_prior (no external evaluation stored for step 4)"


def test_select_split_must_be_an_evaluated_split(tmp_path):
    from effnet_jax.train import train_and_evaluate

    config = tiny_config(select_split="external")
    with pytest.raises(ValueError, match=r"config.select_split='external': expected one of \['validation'\]"):
        train_and_evaluate(config, str(tmp_path / "run"))
