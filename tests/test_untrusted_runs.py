"""Run directories from anywhere (a colleague's, a download): what opening one may read, allocate or believe.

effnet-eval, effnet-predict, effnet-adapt, effnet-soup, effnet-export and effnet-results open a run
with runs.open: its config.json, run.json, metrics.jsonl, calibration.json, soup.json and
adapted.json, and its orbax checkpoints. The runs here are stand-ins (tests/run_fixtures.py: nothing
is trained) tampered with: a value of another type, or past what any run holds, is one line naming
the file and key; a checkpoint's declared arrays are sized before orbax allocates them; nothing is
read through a link out of the run (docs/untrusted-inputs.md).
"""

import io
import json
import logging
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorstore as ts
from data_fixtures import write_tree
from helpers import edit_json, machinery_config, random_variables, stand_in_run, tiny_config
from PIL import Image

from effnet_jax import limits, runs
from effnet_jax.inference import adaptation
from effnet_jax.inference.adaptation import AdaptError, adapt_run
from effnet_jax.metrics.calibration import calibrate_probs
from effnet_jax.models import build_model
from effnet_jax.runs import calibration as calibration_file
from effnet_jax.runs import checkpoints as checkpoint_lib
from effnet_jax.runs import layout, metrics_log, writer
from effnet_jax.runs import model as run_model
from effnet_jax.runs import record as run_record
from effnet_jax.runs import writer as writer_lib
from effnet_jax.runs.layout import Layout
from effnet_jax.train import soup
from effnet_jax.train.soup import make_soup

# --- config.json and run.json ---------------------------------------------------------------------


DEEP = "[" * 100_000 + "]" * 100_000


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


@pytest.mark.parametrize(
    "name, text, why",
    [
        ("config.json", DEEP, "config.json: JSON nested deeper than 32 levels"),
        ("run.json", DEEP, "run.json: JSON nested deeper than 32 levels"),
        ("soup.json", DEEP, "soup.json: JSON nested deeper than 32 levels"),
        ("adapted.json", DEEP, "adapted.json: JSON nested deeper than 32 levels"),
        (
            "calibration.json",
            DEEP,
            "calibration.json: not a valid calibration file \\(ValueError: JSON nested deeper than 32 levels",
        ),
        (
            "calibration.json",
            '{"temperature": 1.5, "fitted_on": "v", "step": 1e400, "ece_before": 0, "ece_after": 0, "n": 1}',
            "calibration.json: not a valid calibration file \\(ValueError: step=inf: expected an integer",
        ),
        ("run.json", '{"image_size": 1e400, "mean": [0.5], "std": [0.5], "train_class_counts": []}', "image_size=inf"),
        ("run.json", '{"image_size": "x", "mean": 5, "std": null, "train_class_counts": {}}', "image_size='x'"),
        ("run.json", '{"image_size": 32, "mean": [NaN], "std": [0.5], "train_class_counts": []}', "mean=\\[nan\\]"),
        ("metrics.jsonl", DEEP + '\n{"step": 3}\n', "metrics.jsonl: line 1 is not a JSON record"),
        ("metrics.jsonl", '{"step": 1e400, "split": "validation"}\n{"step": 3}\n', "line 1: step=inf"),
        ("metrics.jsonl", '{"step": 3, "split": 5}\n', "line 1: split=5"),
    ],
    ids=[
        "config-deep",
        "run-deep",
        "soup-deep",
        "adapted-deep",
        "calibration-deep",
        "calibration-huge-step",
        "run-huge-size",
        "run-types",
        "run-nan-mean",
        "metrics-deep",
        "metrics-huge-step",
        "metrics-split-type",
    ],
)
def test_tampered_run_files_are_one_line_naming_the_file(run_copy, name, text, why):
    _write(os.path.join(run_copy, name), text)
    with pytest.raises(ValueError, match=why) as caught:
        runs.open(run_copy, checkpoint=None)
    assert run_copy in str(caught.value)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"image_size": 10**9, "mean": [0.5], "std": [0.5], "train_class_counts": []}, "image_size="),
        ({"image_size": 32, "mean": [float("nan")], "std": [0.5], "train_class_counts": []}, "mean="),
        ({"image_size": 32, "mean": [0.5, 0.5], "std": [0.5, 0.5], "train_class_counts": []}, "1 or 3 values"),
    ],
)
def test_run_json_values_a_run_never_records_are_refused_naming_the_key(tmp_path, record, message):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    (tmp_path / "run.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=message) as info:
        runs.open(str(tmp_path), None)
    assert "run.json" in str(info.value)


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


# --- metrics.jsonl --------------------------------------------------------------------------------


def test_a_sparse_metrics_file_of_gigabytes_is_refused_from_its_size(run_copy):
    with open(Layout(run_copy).metrics, "a") as f:
        f.truncate(3 << 30)  # costs nothing on disk
    with pytest.raises(ValueError, match="metrics.jsonl: the metrics log would take 3,221,225,472 bytes"):
        runs.open(run_copy, checkpoint=None)


def test_a_metrics_log_of_too_many_lines_is_refused_before_parsing(tmp_path):
    # Before: every line became a dict: ten million "{}" lines (28 MB) took 45 s and 1.7 GB.
    (tmp_path / "metrics.jsonl").write_text("{}\n" * (metrics_log.MAX_RECORDS + 1))
    with pytest.raises(ValueError, match=r"metrics\.jsonl: more than 500,000 lines") as info:
        metrics_log.read_metrics_file(str(tmp_path))
    assert "\n" not in str(info.value)


def test_a_metrics_log_is_held_to_an_eighth_of_the_budget(tmp_path, monkeypatch):
    # Before: held to the whole budget (512 MiB), as JSON that becomes objects many times its size.
    monkeypatch.setenv("EFFNET_JAX_DECODE_BUDGET", "8M")
    line = json.dumps({"step": 1, "split": "train", "x": [0] * 1000}) + "\n"
    (tmp_path / "metrics.jsonl").write_text(line * (1100 * 1024 // len(line) + 1))  # just over 1 MiB
    with pytest.raises(ValueError, match=r"metrics\.jsonl: the metrics log would take .* 1,048,576 bytes"):
        metrics_log.read_metrics_file(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text(line * 100)  # a real log's size reads as before
    assert len(metrics_log.read_metrics_file(str(tmp_path))[0]) == 100


def test_a_metrics_log_line_of_nested_or_huge_values_is_read_as_data(tmp_path):
    lines = [{"step": 1, "split": "train", "loss": 1e308, "x": {"y": [1, 2]}}, {"step": 2, "split": "train"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + "NaN\n")
    records, torn = metrics_log.read_metrics_file(str(tmp_path))
    assert [r["step"] for r in records] == [1, 2] and torn


def test_a_run_record_without_a_step_does_not_stop_a_resumed_sweep_or_soup(tmp_path, monkeypatch):
    # Before: KeyError 'step' (a traceback) in run_finished, which effnet-sweep and seed soups call on resume.
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"split": "run", "stopped_early": True}) + "\n")
    monkeypatch.setattr(soup, "_latest_step", lambda workdir: 3)
    assert soup.run_finished(str(tmp_path), 100) is False
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 3, "split": "run", "stopped_early": True}) + "\n")
    assert soup.run_finished(str(tmp_path), 100) is True


def test_a_record_without_a_step_does_not_stop_a_resumed_run(tmp_path):
    # Before: KeyError 'step' (a traceback) when effnet-train resumed and dropped the records past its step.
    records = [{"split": "note"}, {"step": 2, "split": "train"}, {"step": 9, "split": "train"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    writer.truncate_after(str(tmp_path), 5)
    assert [r.get("step") for r in metrics_log.read_metrics(str(tmp_path))] == [None, 2]


def test_a_torn_last_line_of_metrics_jsonl_is_ignored_and_dropped_on_resume(tmp_path, caplog):
    records = [{"step": 2, "split": "train", "loss": 0.5}, {"step": 4, "split": "validation", "auc": 0.75}]
    path = tmp_path / layout.METRICS
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 6, "split": "tr')
    with caplog.at_level(logging.WARNING, logger="effnet_jax.reporting"):
        assert metrics_log.read_metrics(str(tmp_path)) == records
        assert metrics_log.read_metrics(str(tmp_path), "validation") == records[1:]
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: its last line is cut short (24 bytes, not a record); ignoring it"
    ]
    writer_lib.truncate_after(str(tmp_path), 4)  # what a resume at step 4 does first
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in records)
    path.write_text(path.read_text() + "garbage\n" + json.dumps(records[0]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 3 is not a JSON record"):
        metrics_log.read_metrics(str(tmp_path))


# --- calibration.json -----------------------------------------------------------------------------


_CALIBRATION_BUT_TEMPERATURE = {"fitted_on": "validation", "step": 3, "ece_before": 0.1, "ece_after": 0.05, "n": 9}


@pytest.mark.parametrize("temperature", [5e-324, 1e-5, 1e308, 1000.0, 0.0, -2.0])
def test_a_temperature_outside_the_fitters_range_is_refused_naming_the_file(tmp_path, temperature):
    # Before: any positive finite T was applied: 5e-324 gives NaN probabilities past two classes,
    # 1e308 a line of 300 digits.
    if temperature == 5e-324:
        with np.errstate(all="ignore"):
            assert np.isnan(calibrate_probs(np.array([[0.3, 0.3, 0.4]]), temperature)).all()
    (tmp_path / "calibration.json").write_text(json.dumps({"temperature": temperature, **_CALIBRATION_BUT_TEMPERATURE}))
    with pytest.raises(ValueError, match=r"calibration\.json: temperature=.*: expected a number from 0\.01 to 100"):
        calibration_file.read_calibration(Layout(str(tmp_path)))


@pytest.mark.parametrize("temperature", [0.01, 0.010000000000000004, 1.5, 100.00000000000004])
def test_every_temperature_the_fitter_returns_still_reads(tmp_path, temperature):
    (tmp_path / "calibration.json").write_text(json.dumps({"temperature": temperature, **_CALIBRATION_BUT_TEMPERATURE}))
    assert calibration_file.read_calibration(Layout(str(tmp_path))).temperature == temperature


_CALIBRATION = {"temperature": 2.0, "fitted_on": "validation", "step": 3, "ece_before": 0.1, "ece_after": 0.05, "n": 9}


@pytest.mark.parametrize(
    "change, why",
    [
        ({"step": 3.7}, "step=3.7: expected an integer >= 0"),
        ({"step": "3"}, "step='3': expected an integer >= 0"),
        ({"temperature": "2.0"}, "temperature='2.0': expected a finite number"),
        ({"fitted_on": ["x"]}, r"fitted_on=\['x'\]: expected a string"),
        ({"n": True}, "n=True: expected an integer >= 0"),
        ({"n": -5}, "n=-5: expected an integer >= 0"),
        ({"ece_before": float("nan")}, "ece_before=nan: expected a finite number"),
        ({"tta": 5}, "tta=5: expected a string"),
    ],
    ids=["float-step", "text-step", "text-temperature", "list-fitted-on", "bool-n", "negative-n", "nan-ece", "int-tta"],
)
def test_calibration_values_of_another_type_are_refused_naming_the_key(run_copy, change, why):
    # Before: int(3.7) applied the temperature at step 3; str(), float() and bool counts took anything.
    path = os.path.join(run_copy, "calibration.json")
    with open(path, "w") as f:
        f.write(json.dumps({**_CALIBRATION, **change}))
    with pytest.raises(ValueError, match=f"{path}: not a valid calibration file \\(ValueError: {why}"):
        runs.open(run_copy)


# --- checkpoints: step folders and their records --------------------------------------------------


def _rename_step(workdir, name):
    ckpts = checkpoint_lib.checkpoint_dir(workdir)
    os.rename(os.path.join(ckpts, "3"), os.path.join(ckpts, name))
    return os.path.join(ckpts, name)


def test_a_step_folder_with_leading_zeros_is_named_not_no_checkpoints(run_copy):
    # Before: orbax skipped checkpoints/007 and the error was "no checkpoints in workdir".
    _rename_step(run_copy, "007")
    with pytest.raises(ValueError, match=r"checkpoints/007: a step folder named '007'.*'7'"):
        runs.open(run_copy)


def test_a_step_folder_beyond_the_step_counter_is_refused(run_copy):
    # Before: a copied checkpoints/99999999999999999999999 was taken as the latest (and best) step.
    ckpts = checkpoint_lib.checkpoint_dir(run_copy)
    shutil.copytree(os.path.join(ckpts, "3"), os.path.join(ckpts, "99999999999999999999999"))
    with pytest.raises(ValueError, match=r"99999999999999999999999: a step folder numbered beyond .*2147483647"):
        checkpoint_lib.read_checkpoint(run_copy, "latest", with_state=False)


def test_the_largest_int32_step_and_a_killed_saves_tmp_folder_are_still_accepted(run_copy):
    ckpts = checkpoint_lib.checkpoint_dir(run_copy)
    os.makedirs(os.path.join(ckpts, "4.orbax-checkpoint-tmp-1700000000000000"))
    checkpoint_lib.check_checkpoints(run_copy)
    _rename_step(run_copy, str(2**31 - 1))
    checkpoint_lib.check_checkpoints(run_copy)


def _step(workdir, *parts):
    return os.path.join(workdir, "checkpoints", "3", *parts)


def _write_list(path):
    with open(path, "w") as f:
        f.write("[]")


@pytest.mark.parametrize(
    "tamper, why",
    [
        (_write_list, "a list, expected a JSON object"),
        (lambda p: edit_json(p, lambda v: v.update(commit_timestamp_nsecs=1.5)), "not a checkpoint's metadata"),
        (lambda p: edit_json(p, lambda v: v.update(metrics={"auc": "high"})), "metrics.auc='high': expected a number"),
    ],
    ids=["list", "float-timestamp", "metric-text"],
)
def test_a_steps_checkpoint_metadata_of_another_shape_is_one_line_naming_it(run_copy, tamper, why):
    # Before: orbax parsed it as the manager opened: "Metadata dict must be a dictionary", naming no file.
    path = _step(run_copy, "_CHECKPOINT_METADATA")
    tamper(path)
    with pytest.raises(ValueError, match=f"{path}: {why}"):
        runs.open(run_copy)


@pytest.mark.parametrize(
    "edit, why",
    [
        (lambda c: c.update(image_size=100_000), "image_size=100000: expected an integer from 16 to 2048"),
        (lambda c: c.update(model_mean=[float("nan")] * 3), r"mean=\[nan, nan, nan\]: expected a list of finite"),
        (lambda c: c.update(model_std=[0, 0, 0]), r"std=\[0, 0, 0\]: expected a list of positive"),
        (lambda c: c.update(train_class_counts=["a", "b"]), r"train_class_counts=\['a', 'b'\]: expected"),
    ],
    ids=["image-size", "nan-mean", "zero-std", "text-counts"],
)
def test_a_checkpoint_without_its_run_record_has_its_config_values_checked(run_copy, edit, why):
    # Before: a checkpoint without run/ took image size and normalisation from its config unchecked
    # (an image size of 100000, a NaN mean that blanks every image, an int() traceback naming nothing).
    shutil.rmtree(_step(run_copy, "run"))
    edit_json(_step(run_copy, "config", "metadata"), edit)
    with pytest.raises(ValueError, match=f"{_step(run_copy, 'config')}: {why}"):
        runs.open(run_copy)


def test_a_checkpoint_without_its_run_record_still_opens(run_copy):
    shutil.rmtree(_step(run_copy, "run"))
    run = runs.open(run_copy)
    assert run.record.image_size == machinery_config().image_size


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


# --- checkpoints: the saved state -----------------------------------------------------------------


def _forge_array(workdir, key, shape, chunks=None):
    """Rewrites the array metadata orbax reads shapes from (inside the OCDBT database): a few bytes on disk."""
    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{workdir}/checkpoints/3/state/"}).result()
    meta = json.loads(kv.read(f"{key}/.zarray").result().value)
    meta.update(shape=shape, chunks=chunks or shape)
    kv.write(f"{key}/.zarray", json.dumps(meta)).result()


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


def test_a_state_sized_by_its_own_config_must_still_fit_the_memory_the_machine_has(tmp_path, monkeypatch):
    # The allowance grows with the model the run's config names; a downloaded config can name any.
    import shutil

    from helpers import stand_in_run

    from effnet_jax import runs

    workdir = stand_in_run(str(tmp_path / "run"))
    shutil.rmtree(tmp_path / "run" / "eval", ignore_errors=True)
    monkeypatch.setenv(limits.ENV_VAR, "1M")  # 8 copies of the test model (3.7 MB) are above the budget
    _forge_array(workdir, "batch_stats.bn.mean", [500_000], [8])  # 2 MB: within 8 copies of the model
    monkeypatch.setattr(limits, "available_memory", lambda: 1_500_000)
    with pytest.raises(
        ValueError,
        match=r"checkpoints/3: the saved state's declared arrays would take .* more than the "
        r"1,500,000 bytes of memory this machine has available",
    ):
        runs.open(workdir, "latest").variables()
    monkeypatch.setattr(limits, "available_memory", lambda: 1 << 40)
    try:
        runs.open(workdir, "latest").variables()
    except ValueError as e:  # what orbax makes of the forged array is not this test's; only the bound is
        assert "memory this machine has available" not in str(e)


@pytest.fixture(scope="module")
def tiny_root(exported):
    """``run/`` (random Lite0 weights at 32 px, a jax train state) and ``exported/``: tests/conftest.py's export."""
    return Path(exported).parent


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda p: os.truncate(p, 64 << 20), "67,108,864 bytes, over the"),
        (lambda p: open(p, "w").write("[" * 100_000 + "]" * 100_000), "JSON nested deeper than 32"),
    ],
    ids=["sparse", "deep"],
)
def test_a_checkpoints_array_metadatas_are_read_bounded_before_orbax(tiny_root, tmp_path, make, why):
    # Before: orbax read a sparse array_metadatas/process_0 whole (4 GB: a MemoryError after 15 s).
    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_root / "run", workdir)
    path = _step(workdir, "state", "array_metadatas", "process_0")
    assert os.path.isfile(path)  # written for jax arrays (a trained state), not for a stand-in's numpy ones
    make(path)
    with pytest.raises(ValueError, match=f"{path}: {why}"):
        runs.open(workdir).variables()


def test_a_runs_checkpoint_key_holding_a_path_is_refused_naming_its_metadata(run_copy):
    metadata = os.path.join(run_copy, "checkpoints", "3", "state", "_METADATA")

    def plant(m):
        first = next(iter(m["tree_metadata"].values()))
        first["key_metadata"][0]["key"] = "/etc"

    edit_json(metadata, plant)
    with pytest.raises(ValueError, match=f"{metadata}: an array keyed '/etc': a path"):
        runs.open(run_copy, "latest").variables()


@pytest.fixture(scope="module")
def chunked_run(tmp_path_factory):
    """A run directory as effnet-train leaves it, without training: a stand-in state at step 3.

    Unlike tests/run_fixtures.py's, its arrays are large enough for orbax to write them to chunk
    files of their own, which the tampering below damages.
    """
    workdir = str(tmp_path_factory.mktemp("base") / "run")
    config = machinery_config(num_train_steps=3)
    rng = np.random.default_rng(0)
    state = {
        "step": np.int32(3),
        "params": {"conv": {"kernel": rng.normal(size=(3, 3, 3, 64)).astype(np.float32)}},
        "batch_stats": {"bn": {"mean": np.zeros(64, np.float32), "var": np.ones(64, np.float32)}},
    }
    record = run_record.RunRecord(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, train_class_counts=(20, 44))
    checkpoint_lib.write_checkpoint(workdir, 3, state, {"position": 3}, config, {"auc": 0.6}, run=record)
    layout = Layout(workdir)
    with open(layout.config, "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    run_record.write(workdir, record)
    with open(layout.metrics, "w") as f:
        f.write(json.dumps({"step": 3, "split": "validation", "auc": 0.6, "data": "synthetic"}) + "\n")
    return workdir


@pytest.fixture
def chunked_run_copy(chunked_run, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(chunked_run, workdir, symlinks=True)
    return workdir


def _first_big_file(folder):
    return max((os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs), key=lambda p: os.path.getsize(p))


def _link_chunk_outside(workdir):
    chunk = _first_big_file(_step(workdir, "state"))
    outside = os.path.join(os.path.dirname(workdir), "outside_chunk")
    shutil.move(chunk, outside)
    os.symlink(outside, chunk)


def _link_checkpoints_outside(workdir):
    outside = os.path.join(os.path.dirname(workdir), "outside_checkpoints")
    shutil.move(os.path.join(workdir, "checkpoints"), outside)
    os.symlink(outside, os.path.join(workdir, "checkpoints"))


def _fifo_chunk(workdir):
    chunk = _first_big_file(_step(workdir, "state"))
    os.remove(chunk)
    os.mkfifo(chunk)


def _truncate_chunks(workdir):
    for root, _, files in os.walk(_step(workdir, "state", "ocdbt.process_0")):  # the arrays' chunks
        for name in files:
            os.truncate(os.path.join(root, name), 10)


@pytest.mark.parametrize(
    "tamper, why",
    [
        (lambda w: _write(_step(w, "config", "metadata"), DEEP), "config/metadata: JSON nested deeper than 32"),
        (lambda w: _write(_step(w, "_CHECKPOINT_METADATA"), DEEP), "_CHECKPOINT_METADATA: JSON nested deeper"),
        (lambda w: _write(_step(w, "state", "_METADATA"), DEEP), "state/_METADATA: JSON nested deeper"),
        (
            lambda w: _write(_step(w, "config", "metadata"), '{"model": {"name": 5}}'),
            "3/config: model.name=5: expected a variant name",
        ),
        (
            lambda w: _write(_step(w, "run", "metadata"), '{"image_size": 100000000, "mean": [0.5], "std": [0.5]}'),
            "3/run: image_size=100000000",
        ),
        (_link_chunk_outside, "a link to .*outside_chunk, outside"),
        (_link_checkpoints_outside, "a link to .*outside_checkpoints, outside the run"),
        (_fifo_chunk, "not a regular file or folder"),
        (_truncate_chunks, "3: cannot read this checkpoint"),
        (lambda w: _write(_step(w, "state", "_METADATA"), "{}"), "3: cannot read this checkpoint"),
    ],
    ids=[
        "config-deep",
        "metadata-deep",
        "state-metadata-deep",
        "model-name-int",
        "huge-image-size",
        "chunk-linked-outside",
        "checkpoints-linked-outside",
        "fifo-chunk",
        "truncated-chunks",
        "state-metadata-empty",
    ],
)
def test_a_tampered_checkpoint_is_one_line_before_anything_reads_outside(chunked_run_copy, tamper, why):
    tamper(chunked_run_copy)
    with pytest.raises(ValueError, match=why):
        runs.open(chunked_run_copy, "latest").variables()


# --- soups and adaptations of a run ---------------------------------------------------------------


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


def test_a_soup_given_one_run_twice_through_a_link_is_refused(tmp_path):
    from effnet_jax.train.soup import make_soup

    (tmp_path / "run").mkdir()
    os.symlink(tmp_path / "run", tmp_path / "alias")
    with pytest.raises(ValueError, match=r"soup member .*/run is given more than once \(as .*/alias, which resolves"):
        make_soup([str(tmp_path / "run"), str(tmp_path / "alias")], str(tmp_path / "soup"))
    with pytest.raises(ValueError, match="is given more than once"):
        make_soup([str(tmp_path / "run"), f"{tmp_path}/run/"], str(tmp_path / "soup"))
    assert not (tmp_path / "soup").exists()


# --- adapt and soup on a downloaded run: its checkpoint, its configs, its folders -----------------

STEP = 3  # the stand-in run's checkpoint


def _variables():
    config = machinery_config(num_train_steps=STEP)
    model = build_model(config.model.name, num_classes=run_model.num_classes(config), **run_model.model_kwargs(config))
    return jax.tree.map(np.asarray, random_variables(model))


def _run(path, seed=0, edit=None):
    """A stand-in run at step 3 holding every variable of the test network; ``edit(state)`` changes its state."""
    variables = _variables()
    state = {"step": np.int32(STEP), "params": variables["params"], "batch_stats": variables["batch_stats"]}
    if edit is not None:
        edit(state)
    # data.name as the trainer saves it: resolved from 'auto'.
    config = machinery_config(num_train_steps=STEP, seed=seed, **{"data.name": "synthetic"})
    return stand_in_run(str(path), config=config, state=state)


def _edit_saved_config(workdir, key, value):
    """The checkpoint's saved config with ``key`` set to ``value`` (JSON: any type a download may hold)."""
    path = os.path.join(checkpoint_lib.checkpoint_dir(workdir), str(STEP), "config", "metadata")
    with open(path) as f:
        config = json.load(f)
    config[key] = value
    with open(path, "w") as f:
        json.dump(config, f)


@pytest.fixture
def site(tmp_path):
    """Three small grey PNGs."""
    files = {}
    for i in range(3):
        out = io.BytesIO()
        Image.fromarray(np.full((36, 40), 180 + i, np.uint8)).save(out, format="PNG")
        files[f"scan_{i}.png"] = out.getvalue()
    return str(write_tree(tmp_path / "site", files))


def _drop_conv_head(state):
    del state["params"]["conv_head"]


def _drop_batch_stats(state):
    del state["batch_stats"]


def _integer_params(state):
    state["params"] = jax.tree.map(lambda x: x.astype(np.int32), state["params"])


def _nan_params(state):
    state["params"]["conv_head"]["kernel"] = np.full_like(state["params"]["conv_head"]["kernel"], np.nan)


NOT_THE_MODEL = "which efficientnet_test as its config builds it has; not a checkpoint of this run's model"


@pytest.mark.parametrize(
    "edit, message",
    [
        (_drop_conv_head, f"the saved state has no params/conv_head/kernel, {NOT_THE_MODEL}"),
        (_drop_batch_stats, f"the saved state has no batch_stats/blocks_0_0/bn1/mean, {NOT_THE_MODEL}"),
        (_integer_params, "params/blocks_0_0/bn1/bias is stored as int32; expected floating-point weights"),
        (_nan_params, "params/conv_head/kernel holds NaN or inf; the weights of a usable model are finite"),
    ],
)
def test_adapt_refuses_a_checkpoint_that_is_not_the_runs_model_in_one_line(edit, message, site, tmp_path):
    # Before: flax's ScopeParamNotFoundError or a KeyError traceback; NaN weights gave a run of NaN statistics.
    workdir = _run(tmp_path / "run", edit=edit)
    out = tmp_path / "new"
    with pytest.raises(ValueError) as info:
        adaptation.adapt_run(workdir, site, str(out), batch_size=2)
    assert str(info.value) == f"{checkpoint_lib.checkpoint_dir(workdir)}/{STEP}: {message}"
    assert not out.exists()


def test_adapt_refuses_more_images_than_the_memory_available_holds_before_reading_them(site, tmp_path, monkeypatch):
    # Before: every image and its activations at each cut were held at once, whatever their number:
    # 120 MB an image for a run.json saying 1024 px, hundreds of GB for 2000 images at B7's 600 px.
    workdir = _run(tmp_path / "run")
    monkeypatch.setattr(limits, "available_memory", lambda: 100_000)
    read = []
    monkeypatch.setattr(adaptation.Preprocessor, "__call__", lambda self, path: read.append(path))
    out = tmp_path / "new"
    with pytest.raises(adaptation.AdaptError) as info:
        adaptation.adapt_run(workdir, site, str(out), batch_size=2)
    message = str(info.value)
    assert message.startswith(f"--images={site}: 3 images at 32 px would hold ")
    each = int(message.split("(")[1].split(" an image")[0].replace(",", ""))
    assert message.endswith(
        f"bytes while their statistics are measured ({each:,} an image), more than the 100,000 bytes this machine "
        f"has available; pass --max_images={100_000 // each} or fewer"
    )
    assert 3 * each > 100_000 and read == [] and not out.exists()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("seed", "abc", "config.seed='abc': expected an integer from 0 to 4,294,967,295"),
        ("num_devices", "x", "config.num_devices='x': expected an integer >= 0 (0 = all devices)"),
        ("eval_batch_size", 10**9, "config.eval_batch_size=1000000000: a batch of 1,000,000,000 images of 32x32x3"),
    ],
)
def test_soup_refuses_a_member_config_it_cannot_evaluate_or_record_naming_the_file(key, value, message, tmp_path):
    # Before: a text seed wrote a soup.json that runs.open refuses; num_devices='x' was a TypeError
    # traceback; eval_batch_size=10**9 padded each evaluation batch to a billion images (a hang).
    members = [_run(tmp_path / f"m{seed}", seed) for seed in (0, 1)]
    _edit_saved_config(members[1], key, value)
    with pytest.raises(ValueError) as info:
        soup.make_soup(members, str(tmp_path / "soup"))
    config = f"{checkpoint_lib.checkpoint_dir(members[1])}/{STEP}/config"
    assert str(info.value).startswith(f"soup member {members[1]}: {config}: {message}")
    assert not (tmp_path / "soup" / "soup.json").exists()


def test_soup_refuses_a_member_without_a_data_set_name(tmp_path):
    # Before: AttributeError "'name'" (a traceback) comparing the members' data sets.
    members = [_run(tmp_path / f"m{seed}", seed) for seed in (0, 1)]
    path = os.path.join(checkpoint_lib.checkpoint_dir(members[1]), str(STEP), "config", "metadata")
    with open(path) as f:
        config = json.load(f)
    del config["data"]["name"]
    with open(path, "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError) as info:
        soup.make_soup(members, str(tmp_path / "soup"))
    assert str(info.value) == (
        f"soup member {members[1]}: {path.rsplit('/', 1)[0]}: data.name is missing: the soup is evaluated on the "
        "data set its members trained on"
    )


def test_soup_refuses_a_member_with_nan_weights_naming_it(tmp_path):
    # Before: "probs contain 16 NaN values (did the model diverge?)", naming no member.
    members = [_run(tmp_path / "m0", 0), _run(tmp_path / "m1", 1, edit=_nan_params)]
    with pytest.raises(ValueError) as info:
        soup.make_soup(members, str(tmp_path / "soup"))
    assert str(info.value) == (
        f"soup member {members[1]}: {checkpoint_lib.checkpoint_dir(members[1])}/{STEP}: params/conv_head/kernel "
        "holds NaN or inf; the weights of a usable model are finite"
    )


def test_soup_reads_a_member_metrics_log_whose_records_lack_a_step_or_a_number(tmp_path):
    # Before: KeyError 'step' (a traceback) looking up each member's metric; a text metric was
    # written into soup.json and broke effnet-soup's summary line.
    members = [_run(tmp_path / f"m{seed}", seed) for seed in (0, 1)]
    records = [{"split": "validation", "auc": 0.9}, {"step": STEP, "split": "validation", "auc": "high"}]
    with open(os.path.join(members[1], "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    made = soup.make_soup(members, str(tmp_path / "soup"))
    assert [m["auc"] for m in made["members"]] == [0.6, None]


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("keep_checkpoints", "many", "keep_checkpoints='many': expected an integer >= 1"),
        ("data", [1], "data=[1]: expected the data section of a config (a JSON object)"),
    ],
)
def test_a_saved_config_that_a_new_run_cannot_be_saved_or_built_from_is_refused_naming_it(
    key, value, message, tmp_path
):
    # Before: a TypeError traceback from orbax's keep policy when effnet-adapt or effnet-soup saved
    # the new run (after the work); an AttributeError traceback reading the classes of data=[1].
    workdir = _run(tmp_path / "run")
    _edit_saved_config(workdir, key, value)
    with pytest.raises(ValueError) as info:
        checkpoint_lib.read_checkpoint(workdir, with_state=False)
    assert str(info.value) == f"{checkpoint_lib.checkpoint_dir(workdir)}/{STEP}/config: {message}"


def test_soup_refuses_a_workdir_that_leads_into_a_member_through_a_link(tmp_path):
    # Before: only the path as given was compared: the soup was written inside member m0 through the link.
    members = [_run(tmp_path / f"m{seed}", seed) for seed in (0, 1)]
    os.makedirs(os.path.join(members[0], "sub"))
    os.symlink(os.path.join(members[0], "sub"), tmp_path / "soup")
    with pytest.raises(soup.SoupWorkdirError) as info:
        soup.make_soup(members, str(tmp_path / "soup"))
    assert str(info.value) == (
        f"the soup's workdir {tmp_path / 'soup'} is inside member {members[0]} (it resolves to "
        f"{os.path.join(members[0], 'sub')}); choose a folder outside it"
    )
    assert os.listdir(os.path.join(members[0], "sub")) == []


def test_a_checkpoints_folder_of_thousands_of_entries_is_refused_before_orbax_lists_them(tmp_path):
    # Before: orbax read every step folder when each CheckpointManager opened (20,000 empty ones: 35 s
    # an open, twice per command); the command then failed on the last of them.
    workdir = stand_in_run(str(tmp_path / "run"))
    directory = checkpoint_lib.checkpoint_dir(workdir)
    for step in range(4, 4 + checkpoint_lib.MAX_CHECKPOINT_ENTRIES):
        os.mkdir(os.path.join(directory, str(step)))
    with pytest.raises(ValueError) as info:
        checkpoint_lib.read_checkpoint(workdir, with_state=False)
    assert str(info.value) == (
        f"{directory}: more than 4,096 entries; a run keeps a few checkpoints (config.keep_checkpoints and its "
        "best), not this many"
    )


def test_adapt_refuses_an_out_under_a_file_before_any_work(site, tmp_path):
    # Before: NotADirectoryError (a traceback) when the new run was written, after the work.
    workdir = _run(tmp_path / "run")
    (tmp_path / "file").write_text("mine")
    with pytest.raises(adaptation.AdaptError) as info:
        adaptation.adapt_run(workdir, site, str(tmp_path / "file" / "new"))
    assert str(info.value) == f"--out={tmp_path / 'file' / 'new'}: cannot be made, {tmp_path / 'file'} is not a folder"
    assert (tmp_path / "file").read_text() == "mine"


def test_soup_refuses_a_dangling_link_as_its_workdir_in_one_line(tmp_path):
    # Before: FileExistsError (a traceback, which effnet-soup does not turn into its one line).
    members = [_run(tmp_path / f"m{seed}", seed) for seed in (0, 1)]
    os.symlink(tmp_path / "nowhere", tmp_path / "soup")
    with pytest.raises(soup.SoupWorkdirError) as info:
        soup.make_soup(members, str(tmp_path / "soup"))
    assert str(info.value) == f"--workdir={tmp_path / 'soup'}: cannot make it a folder (File exists)"
    assert not os.path.lexists(tmp_path / "nowhere")


# --- the data folders a saved run's config names -------------------------------------------------


@pytest.mark.parametrize("checkpoint", ["best", None])
def test_a_saved_runs_data_folder_is_never_prepared_into(tmp_path, checkpoint):
    # Before: evaluating a downloaded run prepared its data set into whatever data.data_dir its config named.
    from data_fixtures import GOOD_TREE

    from effnet_jax.data import split_info

    images = write_tree(tmp_path / "chest_xray", GOOD_TREE)
    victim = tmp_path / "victim"
    victim.mkdir()
    config = machinery_config(num_train_steps=3)
    config.data.name, config.data.data_dir, config.data.manual_dir = "chest_xray", str(victim), str(images)
    workdir = stand_in_run(str(tmp_path / "run"), config=config)
    # Any value a download may hold there (a bool field would refuse a text one).
    _edit_both_saved_configs([workdir], lambda saved: saved["data"].update(prepare="yes"))
    with pytest.raises(FileNotFoundError) as refusal:
        split_info(runs.open(workdir, checkpoint).config.data, "test")
    assert f"is not prepared under {victim}" in str(refusal.value)
    assert "effnet-data prepare --name=chest_xray" in str(refusal.value) and "\n" not in str(refusal.value)
    assert os.listdir(victim) == []


def _edit_both_saved_configs(members, edit):
    """``edit(config dict)`` applied to every member's saved config (the checkpoint's and config.json)."""
    for workdir in members:
        paths = [os.path.join(checkpoint_lib.checkpoint_dir(workdir), str(STEP), "config", "metadata")]
        paths.append(Layout(workdir).config)
        for path in paths:
            with open(path) as f:
                config = json.load(f)
            edit(config)
            with open(path, "w") as f:
                json.dump(config, f)


def test_a_soup_never_prepares_data_into_the_folder_its_members_configs_name(tmp_path):
    # Before: the soup evaluated with the members' saved data.prepare=True, writing a TFDS set into data_dir.
    from data_fixtures import GOOD_TREE

    images = write_tree(tmp_path / "chest_xray", GOOD_TREE)
    victim = tmp_path / "victim"
    victim.mkdir()
    members = [_run(tmp_path / f"m{seed}", seed) for seed in (0, 1)]

    def chest_xray_in_victim(config):
        config["data"].update(name="chest_xray", data_dir=str(victim), manual_dir=str(images), prepare=True)

    _edit_both_saved_configs(members, chest_xray_in_victim)
    with pytest.raises(FileNotFoundError, match=f"is not prepared under {victim}/chest_xray/"):
        soup.make_soup(members, str(tmp_path / "soup"))
    assert os.listdir(victim) == []


def test_a_soup_takes_members_trained_before_a_config_key_existed(tmp_path):
    # Before: "config.eval_every_steps=None: expected an integer >= 0", for a key added after they trained.
    members = [_run(tmp_path / f"m{seed}", seed) for seed in (0, 1)]
    _edit_both_saved_configs(members, lambda config: config.pop("eval_every_steps"))
    record = soup.make_soup(members, str(tmp_path / "soup"))
    assert [member["seed"] for member in record["members"]] == [0, 1]
