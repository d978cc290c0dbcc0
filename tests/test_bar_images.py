"""docs/experiments/scripts/bar_images.py: the bars of issue #32 counted in images, exactly."""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "docs" / "experiments" / "scripts" / "bar_images.py"


@pytest.fixture(scope="module")
def bar_images():
    sys.path.insert(0, str(SCRIPT.parent))  # the script imports its sibling summarise_runs
    spec = importlib.util.spec_from_file_location("bar_images", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(labels, probs, threshold):
    return {"files": [f"f{i}" for i in range(len(labels))], "labels": labels, "probs": probs, "threshold": threshold}


def test_at_least_counts_the_fewest_images_that_reach_a_rate(bar_images):
    assert bar_images.at_least(0.94, 314) == 296  # 295.16 -> 296
    assert bar_images.at_least(0.95, 196) == 187  # 186.2 -> 187
    assert bar_images.at_least(0.90, 118) == 107  # 106.2 -> 107
    assert bar_images.at_least(0.95, 100) == 95  # exactly 95.0, not 96 from rounding


def test_a_perfect_ranking_has_no_pair_wrong_and_no_shared_error(bar_images):
    labels = np.array([0] * 20 + [1] * 40)
    perfect = _run(labels, np.r_[np.linspace(0.0, 0.4, 20), np.linspace(0.6, 1.0, 40)], 0.5)
    rows = {r["bar"]: r for r in bar_images.bar_counts([perfect])}
    assert rows["accuracy >= 0.94"]["asks"].startswith("57 of 60 X-rays right (at most 3 wrong)")
    # The rule fitted on one half may miss a pneumonia of the other, never a normal here.
    assert rows["specificity >= 0.9 at that sensitivity"]["have"] == 20.0
    assert rows["specificity >= 0.9 at that sensitivity"]["short"] == 0.0
    assert rows["AUC >= 0.985"]["asks"].startswith("at most 12 of 800 ")  # floor(0.015 * 800)
    assert rows["AUC >= 0.985"]["have"] == 0.0
    shared = rows["normals every run calls pneumonia at its own operating threshold"]
    assert shared["have"] == 0 and shared["short"] is None


def test_normals_scored_above_every_positive_cost_pairs_and_count_as_shared_only_if_every_run_errs(bar_images):
    labels = np.array([0] * 20 + [1] * 40)
    probs = np.r_[np.linspace(0.0, 0.4, 20), np.linspace(0.6, 0.98, 40)]
    one = probs.copy()
    one[[0, 1]] = 0.99  # two normals above every pneumonia: 2 * 40 pairs the wrong way
    other = probs.copy()
    other[[1, 2]] = 0.99  # only normal 1 is wrong in both runs
    rows = {r["bar"]: r for r in bar_images.bar_counts([_run(labels, one, 0.5), _run(labels, other, 0.5)])}
    assert rows["AUC >= 0.985"]["have"] == 80.0
    assert rows["AUC >= 0.985"]["short"] == 68.0  # 80 - 12 allowed
    assert rows["normals every run calls pneumonia at its own operating threshold"]["have"] == 1


def test_runs_on_different_images_are_refused(bar_images):
    labels = np.array([0] * 4 + [1] * 4)
    probs = np.linspace(0, 1, 8)
    with pytest.raises(ValueError, match="different images"):
        bar_images.bar_counts([_run(labels, probs, 0.5), _run(labels[::-1], probs, 0.5)])
