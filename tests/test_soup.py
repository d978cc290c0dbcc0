"""Model soups of seeds: effnet-train's soup_seeds and make_soup average runs into one ordinary run directory."""

import json
import os
import re
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
import pytest
from data_fixtures import jpeg, write_tree
from flax import traverse_util
from helpers import machinery_config, session_compilation_cache, tiny_config

from effnet_jax import runs
from effnet_jax.cli import errors
from effnet_jax.inference import thresholds
from effnet_jax.inference.evaluation import evaluate_checkpoint
from effnet_jax.runs.checkpoints import read_checkpoint
from effnet_jax.runs.metrics_log import read_metrics
from effnet_jax.runs.model import inference_variables
from effnet_jax.train import feed as feed_lib
from effnet_jax.train import soup as soup_lib
from effnet_jax.train.loop import train_and_evaluate
from effnet_jax.train.parallel import Parallel

pytestmark = pytest.mark.slow  # trains two tiny members for real


def _config(external: str, **overrides):
    # test_sweep.py trains these very steps (6 steps, 1 device): the session cache compiles them once.
    # One evaluation, at the end (unless overridden); a checkpoint at step 3 too (an unfinished member, below).
    settings = dict(
        num_train_steps=6,
        eval_every_steps=0,
        checkpoint_every_steps=3,
        log_every_steps=3,
        num_devices=1,
        soup_seeds=2,
        select_split="external",
    )
    config = machinery_config(**{**settings, **overrides})
    config.data.external = (external,)
    return config


@pytest.fixture(scope="module")
def soup_run(tmp_path_factory):
    """``(workdir, members, config, soup.json)`` of a soup of two seeds made through effnet-train's entry point."""
    root = tmp_path_factory.mktemp("soup")
    files = {f"NORMAL/n{i}.jpeg": jpeg(300 + i, size=(48, 40)) for i in range(4)}
    files.update({f"PNEUMONIA/p{i}.jpeg": jpeg(400 + i, size=(48, 40)) for i in range(6)})
    # One seed after another (the vmapped members below are compared with these), evaluated at 3 and 6.
    config = _config(str(write_tree(root / "ext", files)), soup_vmap="off", eval_every_steps=3)
    workdir = str(root / "soup")
    with session_compilation_cache(tmp_path_factory):
        made = soup_lib.train_soup(config, workdir)
    return workdir, [soup_lib.member_workdir(workdir, seed) for seed in (0, 1)], config, made


@pytest.fixture(scope="module")
def saved(soup_run):
    """Each member's best checkpoint and the soup's, read once: ``(members, soup)``."""
    workdir, members, _, _ = soup_run
    return [read_checkpoint(m, "best") for m in members], read_checkpoint(workdir, "best")


def test_each_seed_trains_into_members_and_the_soup_is_written_beside_them(soup_run, saved):
    workdir, members, _, made = soup_run
    (first, second), soup = saved
    assert sorted(os.listdir(os.path.join(workdir, "members"))) == ["seed_0", "seed_1"]
    for seed, member in zip((0, 1), (first, second)):
        assert (member.config.seed, member.config.soup_seeds) == (seed, 1)
        # Evaluated at 3 and 6: the best checkpoint is either; the member trained to the end.
        assert read_checkpoint(member.workdir, "latest").step == 6 and member.step in (3, 6)
        assert [r["step"] for r in read_metrics(member.workdir, "train")] == [3, 6]
    with open(os.path.join(workdir, "soup.json")) as f:
        assert json.load(f) == made
    assert [(m["workdir"], m["step"], m["seed"]) for m in made["members"]] == [
        (members[0], first.step, 0),
        (members[1], second.step, 1),
    ]
    # The soup's step is the largest member step; its only checkpoint is the best.
    assert made["step"] == soup.step == max(first.step, second.step)
    assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(soup.step)]
    assert made["select_split"] == "external" and made["metric"] == "auc"
    assert soup.config.soup.members == members and soup.config.soup.seeds == [0, 1]
    assert soup.config.soup.steps == [first.step, second.step]


def test_the_soups_weights_are_the_mean_of_the_members(saved):
    members, soup = saved
    parts = [soup_lib.averaged_weights(m.state) for m in members]
    mean = soup_lib.averaged_weights(soup.state)
    # params, batch_stats and (this config keeps EMA weights) both EMA copies
    assert {k.split("/")[0] for k in mean} == set(soup_lib.AVERAGED) and mean.keys() == parts[0].keys()
    for key, value in mean.items():
        expected = (np.asarray(parts[0][key], np.float64) + np.asarray(parts[1][key], np.float64)) / 2
        assert value.dtype == parts[0][key].dtype, key
        np.testing.assert_allclose(np.asarray(value), expected, rtol=1e-6, atol=1e-7, err_msg=key)
    assert not np.allclose(parts[0]["params/classifier/kernel"], parts[1]["params/classifier/kernel"])


def test_the_soups_variables_are_the_mean_of_the_members_inference_weights(soup_run, saved):
    workdir = soup_run[0]
    members, soup = saved
    run = runs.open(workdir)
    assert run.step == soup.step and run.soup["members"][0]["step"] == members[0].step
    got = traverse_util.flatten_dict(run.variables(), sep="/")
    # With EMA, inference uses the EMA copies: the soup's are the mean of the members' EMA copies.
    first, second = (traverse_util.flatten_dict(inference_variables(m.state), sep="/") for m in members)
    assert got.keys() == first.keys()
    for key, value in first.items():
        np.testing.assert_allclose(got[key], (np.asarray(value) + np.asarray(second[key])) / 2, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got["params/classifier/kernel"], soup.state["ema_params"]["classifier"]["kernel"])


def test_the_checkpoint_has_the_trainers_format(soup_run, saved):
    workdir, members, _, _ = soup_run
    (first, _), soup = saved

    def layout(run, step):
        folder = os.path.join(run, "checkpoints", str(step))
        with open(os.path.join(folder, "state", "_METADATA")) as f:
            tree = json.load(f)["tree_metadata"]
        return sorted(os.listdir(folder)), {
            k: (v.get("value_metadata") or {}).get("value_type") for k, v in tree.items()
        }

    assert layout(workdir, soup.step) == layout(members[0], first.step)
    for name in ("config.json", "run.json", "metrics.jsonl", "soup.json"):
        assert os.path.isfile(os.path.join(workdir, name)), name


def test_the_soup_is_evaluated_as_the_trainer_evaluates_and_effnet_eval_reads_it(soup_run, saved):
    workdir, _, config, made = soup_run
    step = saved[1].step
    records = {r["split"]: r for r in read_metrics(workdir)}
    assert set(records) == {"validation", "external", "run"} and {r["step"] for r in records.values()} == {step}
    assert records["external"]["n"] == 10 and records["validation"]["data"] == "synthetic"
    assert made["soup"]["auc"] == records["external"]["auc"]
    # The operating threshold is the soup's own external sensitivity threshold.
    run = runs.open(workdir)
    value, rule = thresholds.operating_threshold(run)
    assert value == records["external"]["sensitivity_threshold"] and rule.startswith("external_sensitivity")
    report = evaluate_checkpoint(run, split="external", progress=False, bootstrap_resamples=0)
    assert report.step == step and report.operating_threshold == value
    assert report.metrics["threshold_0.5"]["auc"] == pytest.approx(records["external"]["auc"], abs=1e-6)


def test_a_rerun_retrains_nothing_and_keeps_the_soup(soup_run, monkeypatch):
    workdir, members, config, made = soup_run

    def files(run):
        return read_metrics(run), {
            n: os.stat(os.path.join(run, "checkpoints", n)).st_mtime_ns
            for n in os.listdir(os.path.join(run, "checkpoints"))
        }

    before = [files(run) for run in (*members, workdir)]
    monkeypatch.setattr(soup_lib, "train_and_evaluate", lambda *a: pytest.fail(f"retrained {a[1]}"))
    assert soup_lib.train_soup(config, workdir) == made
    assert [files(run) for run in (*members, workdir)] == before


def test_a_rerun_resumes_an_unfinished_member_and_trains_a_missing_one(soup_run, tmp_path, monkeypatch):
    _, members, config, _ = soup_run
    workdir = str(tmp_path / "again")
    shutil.copytree(members[0], soup_lib.member_workdir(workdir, 0))  # finished
    shutil.copytree(members[1], soup_lib.member_workdir(workdir, 1))
    shutil.rmtree(os.path.join(soup_lib.member_workdir(workdir, 1), "checkpoints", "6"))  # killed after step 3
    trained = []
    monkeypatch.setattr(soup_lib, "train_and_evaluate", lambda cfg, run: trained.append((cfg.seed, run)))
    config = config.copy_and_resolve_references()
    config.soup_seeds = 3
    assert soup_lib.train_soup(config, workdir) is None  # seeds 1 and 2 did not reach step 6: no soup
    assert trained == [(1, soup_lib.member_workdir(workdir, 1)), (2, soup_lib.member_workdir(workdir, 2))]
    assert not os.path.exists(os.path.join(workdir, "soup.json"))


def _copy_member(member, tmp_path, item, edit, step):
    """A copy of ``member`` whose checkpoint item (config or run record) at every step ``edit`` changed."""
    copy = str(tmp_path / "changed")
    shutil.copytree(member, copy)
    path = os.path.join(copy, "checkpoints", str(step), item, "metadata")
    with open(path) as f:
        blob = json.load(f)
    edit(blob)
    with open(path, "w") as f:
        json.dump(blob, f)
    return copy


@pytest.mark.parametrize(
    "item, edit, key",
    [
        ("config", lambda c: c["model"].update(name="efficientnet_b0"), "model.name"),
        ("run", lambda r: r.update(image_size=64), "image_size"),
        ("config", lambda c: c["data"].update(name="chest_xray"), "data.name"),
    ],
)
def test_members_of_another_model_or_input_are_refused_naming_the_member_and_key(
    soup_run, saved, tmp_path, item, edit, key
):
    members = soup_run[1]
    other = _copy_member(members[1], tmp_path, item, edit, saved[0][1].step)
    with pytest.raises(soup_lib.IncompatibleMembersError, match=rf"soup member {other} differs .* in {key}"):
        soup_lib.make_soup([members[0], other], str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "checkpoints")
    assert errors.one_line(soup_lib.IncompatibleMembersError("x"))[0] == errors.EXIT_INPUT


def test_a_parameter_tree_that_differs_is_refused_naming_the_parameter(saved):
    first, other = saved[0]
    shapes = {k: (np.shape(v), np.asarray(v).dtype) for k, v in soup_lib.averaged_weights(first.state).items()}
    weights = dict(soup_lib.averaged_weights(other.state))
    weights["params/classifier/kernel"] = np.zeros((3, 2), np.float32)
    with pytest.raises(soup_lib.IncompatibleMembersError, match=r"in params/classifier/kernel: shape \(3, 2\)"):
        soup_lib.check_same_weights(first, other, shapes, weights)
    del weights["params/classifier/kernel"]
    with pytest.raises(soup_lib.IncompatibleMembersError, match=r"in params/classifier/kernel: absent there"):
        soup_lib.check_same_weights(first, other, shapes, weights)


def test_a_member_without_checkpoints_is_named(soup_run, tmp_path):
    members = soup_run[1]
    empty = tmp_path / "never_trained"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=rf"soup member {empty}: no checkpoints"):
        soup_lib.make_soup([members[0], str(empty)], str(tmp_path / "out"))


def test_a_workdir_holding_another_run_or_inside_a_member_is_refused_untouched(soup_run, tmp_path):
    members = soup_run[1]
    lock = os.path.join(members[1], ".lock")
    before = os.stat(lock).st_mtime_ns
    with pytest.raises(soup_lib.SoupWorkdirError, match=r"already holds a run \(checkpoints\)"):
        soup_lib.make_soup(members[:1] + [str(tmp_path / "elsewhere")], members[1])
    assert os.stat(lock).st_mtime_ns == before  # refused before it was even locked
    with pytest.raises(soup_lib.SoupWorkdirError, match=rf"inside member {members[0]}"):
        soup_lib.make_soup(members, os.path.join(members[0], "soup"))
    assert not os.path.exists(os.path.join(members[0], "soup"))


@pytest.mark.parametrize("value", [0, -1, 1.5, "2"])
def test_a_bad_soup_seeds_is_refused_naming_the_key(value):
    config = tiny_config()
    with config.unlocked(), config.ignore_type():
        config.soup_seeds = value
    with pytest.raises(ValueError, match=r"config\.soup_seeds=.*expected an integer >= 1") as raised:
        soup_lib.train_soup(config, "/nonexistent/never/made")
    assert errors.one_line(raised.value)[0] == errors.EXIT_USAGE


def test_train_and_evaluate_alone_refuses_a_soup_config(tmp_path):
    from effnet_jax.train import train_and_evaluate

    with pytest.raises(ValueError, match=r"config\.soup_seeds=2: train_and_evaluate trains one run"):
        train_and_evaluate(tiny_config(soup_seeds=2), str(tmp_path))


# --------------------------------------------------------------------------------------------------
# combine='logits': the same members kept whole, a seed ensemble (models.ensemble.LogitEnsemble).
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ensemble_run(soup_run, tmp_path_factory):
    """``(workdir, soup.json)`` of the fixture's two members combined by their logits (effnet-soup --combine=logits)."""
    workdir = str(tmp_path_factory.mktemp("ensemble") / "run")
    with session_compilation_cache(tmp_path_factory):
        made = soup_lib.make_soup(soup_run[1], workdir, combine="logits")
    return workdir, made


def test_an_ensemble_keeps_every_members_weights_bit_for_bit(saved, ensemble_run):
    members, _ = saved
    workdir, made = ensemble_run
    ensemble = read_checkpoint(workdir, "best")
    assert made["combine"] == "logits" and ensemble.config.soup.combine == "logits"
    assert made["step"] == ensemble.step == max(m.step for m in members)
    stacked = soup_lib.averaged_weights(ensemble.state)
    parts = [soup_lib.averaged_weights(m.state) for m in members]
    assert stacked.keys() == parts[0].keys()
    for key, value in stacked.items():
        assert value.shape == (2, *np.shape(parts[0][key])) and value.dtype == parts[0][key].dtype, key
        for i in (0, 1):
            np.testing.assert_array_equal(value[i], parts[i][key], err_msg=key)


def test_an_ensemble_scores_the_mean_of_its_members_log_odds_and_effnet_eval_reads_it(soup_run, ensemble_run):
    from effnet_jax.inference.evaluation import predict_split
    from effnet_jax.models.ensemble import LogitEnsemble

    workdir, made = ensemble_run
    ensemble = runs.open(workdir)
    assert isinstance(ensemble.model(), LogitEnsemble) and ensemble.model().size == 2 == ensemble.ensemble_size

    def probs(r):
        size, mean, std = r.input_spec
        args = dict(image_size=size, mean=mean, std=std, batch_size=16, progress=False)
        return predict_split(r.model(), r.variables(), r.config.data, "external", **args).probs

    each = [probs(runs.open(m)) for m in soup_run[1]]
    log_odds = np.mean([np.log(p) - np.log1p(-p) for p in each], axis=0)
    np.testing.assert_allclose(probs(ensemble), 1 / (1 + np.exp(-log_odds)), rtol=1e-5, atol=1e-6)
    # Evaluated by the trainer's code at its step, and readable by effnet-eval like any run.
    records = {r["split"]: r for r in read_metrics(workdir)}
    assert made["soup"]["auc"] == records["external"]["auc"] and records["external"]["n"] == 10
    report = evaluate_checkpoint(ensemble, split="external", progress=False, bootstrap_resamples=0)
    assert report.metrics["threshold_0.5"]["auc"] == pytest.approx(records["external"]["auc"], abs=1e-6)
    from effnet_jax.reporting.model_card import render_model_card

    card = render_model_card(runs.open(workdir, checkpoint=None))
    assert "- Seed ensemble: the mean of the logits of 2 runs, seeds [0, 1]" in card


def test_an_ensemble_exports_and_serves_its_own_probabilities(ensemble_run, tmp_path):
    from effnet_jax import serving
    from effnet_jax.inference.export import export_run
    from effnet_jax.inference.prediction import Predictor

    workdir, _ = ensemble_run
    run = runs.open(workdir)
    meta = export_run(run, str(tmp_path / "exported"), platforms=("cpu",))
    assert meta["model"]["ensemble_members"] == 2 and "2 ensemble members" in meta["preprocessing"]["in_function"]
    model = serving.load(str(tmp_path / "exported"))
    size = run.input_spec[0]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size + 9, size + 5), dtype=np.uint8) for _ in range(3)]
    predictor = Predictor(run)
    expected = [r["prob_pneumonia"] for r in predictor.predict(images)]
    np.testing.assert_allclose(model(images), expected, rtol=1e-5, atol=1e-6)
    # effnet-predict --gradcam: the same probabilities, a map over both members per image.
    with_maps = list(predictor.predict(images, gradcam_dir=str(tmp_path / "maps")))
    np.testing.assert_allclose([r["prob_pneumonia"] for r in with_maps], expected, rtol=1e-5, atol=1e-6)
    assert all(os.path.isfile(r["gradcam"]) for r in with_maps)


def test_the_same_members_combined_the_other_way_are_refused_in_that_workdir(soup_run, ensemble_run):
    workdir, made = ensemble_run
    assert soup_lib.make_soup(soup_run[1], workdir, combine="logits") == made  # the same: left as it is
    with pytest.raises(soup_lib.SoupWorkdirError, match="combined by logits"):
        soup_lib.make_soup(soup_run[1], workdir, combine="weights")


def test_a_bad_soup_combine_is_refused_naming_the_key():
    config = tiny_config(soup_combine="mean")
    with pytest.raises(ValueError, match=r"config\.soup_combine='mean': expected one of 'weights', 'logits'"):
        soup_lib.train_soup(config, "/nonexistent/never/made")


# --------------------------------------------------------------------------------------------------
# config.soup_vmap: the members trained as one vmapped program, each into its own run directory.
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vmapped_run(soup_run, tmp_path_factory):
    """``{'straight', 'resumed'}``: the fixture's soup with its members trained as one vmapped program (soup_vmap='on').

    'straight' trains its 6 steps at once; 'resumed' stops at step 3 (stop_after_steps) and is rerun.
    """
    config = soup_run[2].copy_and_resolve_references()
    config.soup_vmap = "on"  # the tiny synthetic set is resident: the members train together
    root = tmp_path_factory.mktemp("vmapped")
    made = {"straight": str(root / "straight"), "resumed": str(root / "resumed")}
    stopped = config.copy_and_resolve_references()
    stopped.stop_after_steps = 3
    with session_compilation_cache(tmp_path_factory):
        soup_lib.train_soup(config, made["straight"])
        assert soup_lib.train_soup(stopped, made["resumed"]) is None
        soup_lib.train_soup(config, made["resumed"])
    return made


def _member_files(workdir):
    """Every file under a run's directory, as relative paths; orbax's array files as their ``state`` folder.

    Orbax names the files that hold a checkpoint's arrays by content and write order; the
    tensorboard file by the time it was opened.
    """
    found = set()
    for folder, _, names in os.walk(workdir):
        for name in names:
            parts = os.path.relpath(os.path.join(folder, name), workdir).split(os.sep)
            if parts[0] == "checkpoints" and len(parts) > 3 and parts[2] == "state":
                parts = parts[:3]
            elif parts[0] == "tensorboard":
                parts = ["tensorboard", name.split(".")[0]]
            found.add("/".join(parts))
    return sorted(found)


def _relative_l2(a: dict, b: dict) -> float:
    """||a - b|| / ||b|| over the parameters of two flattened weight trees, in float64."""
    keys = [k for k in b if k.startswith("params/")]
    num = sum(float(np.sum((np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)) ** 2)) for k in keys)
    return (num / sum(float(np.sum(np.asarray(b[k], np.float64) ** 2)) for k in keys)) ** 0.5


def test_vmapped_members_write_exactly_what_members_trained_one_at_a_time_write(soup_run, vmapped_run):
    workdir = soup_run[0]
    for seed in (0, 1):
        alone = soup_lib.member_workdir(workdir, seed)
        files = _member_files(alone)
        # .lock, config.json, run.json, metrics.jsonl, one tensorboard file, 11 per checkpoint (3 and 6)
        assert len(files) == 5 + 2 * 11 and sum(f.startswith("checkpoints/") for f in files) == 22
        for kind in ("straight", "resumed"):
            member = soup_lib.member_workdir(vmapped_run[kind], seed)
            assert _member_files(member) == files, (kind, seed)
            with open(os.path.join(member, "run.json")) as f, open(os.path.join(alone, "run.json")) as g:
                assert f.read() == g.read()
            with open(os.path.join(member, "config.json")) as f, open(os.path.join(alone, "config.json")) as g:
                mine, theirs = json.load(f), json.load(g)
            assert (mine.pop("soup_vmap"), theirs.pop("soup_vmap")) == ("on", "off")
            # config.json is written when a run begins: the resumed one's first part stopped at step 3.
            stopped = {"straight": -1, "resumed": 3}[kind]
            assert (mine.pop("stop_after_steps"), theirs.pop("stop_after_steps")) == (stopped, -1)
            assert mine == theirs
            assert mine["seed"] == seed and mine["soup_seeds"] == 1
            for split in ("train", "validation", "external"):
                steps = [r["step"] for r in read_metrics(member, split)]
                assert steps == [r["step"] for r in read_metrics(alone, split)] == [3, 6], (kind, split)
            # Each member's own place in its own data order, checkpointed as a run of its own checkpoints it.
            for step in ("3", "6"):
                saved = []
                for run in (member, alone):
                    with open(os.path.join(run, "checkpoints", step, "data_iter", "metadata")) as f:
                        saved.append(json.load(f))
                assert saved[0] == saved[1], (kind, seed, step)
        records = read_metrics(soup_lib.member_workdir(vmapped_run["resumed"], seed), "run")
        assert [(r["step"], r["resumed_from_step"], r["members_in_one_program"]) for r in records] == [
            (3, 0, 2),
            (6, 3, 2),
        ]
    for kind in ("straight", "resumed"):
        with open(os.path.join(vmapped_run[kind], "soup.json")) as f:
            assert [m["seed"] for m in json.load(f)["members"]] == [0, 1]


def test_vmapped_members_match_members_trained_one_at_a_time_to_float_tolerance(soup_run, vmapped_run):
    # Not bitwise on the CPU: XLA fuses the vmapped step's convolutions, BatchNorm statistics
    # and loss reductions differently (each of those ops alone is bitwise under vmap). The
    # difference starts at float32 rounding and grows with the steps of this random-init model;
    # another member's stream (its seed, data order or augmentation) differs in the second digit.
    workdir = soup_run[0]
    for seed in (0, 1):
        alone = soup_lib.member_workdir(workdir, seed)
        member = soup_lib.member_workdir(vmapped_run["straight"], seed)
        other = soup_lib.member_workdir(workdir, 1 - seed)
        first = [read_metrics(run, "train")[0]["loss"] for run in (member, alone, other)]  # steps 1-3
        assert first[0] == pytest.approx(first[1], rel=1e-5) and first[2] != pytest.approx(first[1], rel=1e-2)
        for split in ("validation", "external"):
            got, want = (read_metrics(run, split)[0] for run in (member, alone))  # step 3
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-4), split
            assert got["accuracy"] == want["accuracy"], split
        for step, tol in ((3, 5e-3), (6, 5e-2)):
            got, want = (soup_lib.averaged_weights(read_checkpoint(run, step).state) for run in (member, alone))
            assert got.keys() == want.keys()
            assert _relative_l2(got, want) < tol, step
        # Each member's checkpoint is chosen on its own select_split record, as for a run of its own.
        assert read_checkpoint(member, "best").step == read_checkpoint(alone, "best").step


def test_a_stopped_vmapped_soup_resumes_bitwise(vmapped_run):
    for seed in (0, 1):
        straight, resumed = (soup_lib.member_workdir(vmapped_run[k], seed) for k in ("straight", "resumed"))
        a, b = (jax.tree_util.tree_leaves_with_path(read_checkpoint(m, 6).state) for m in (straight, resumed))
        assert [p for p, _ in a] == [p for p, _ in b] and len(a) > 0
        for (path, x), (_, y) in zip(a, b):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
        for split in ("train", "validation", "external"):
            strip = lambda rs: [{k: v for k, v in r.items() if k not in ("images_per_sec", "time")} for r in rs]  # noqa: E731
            assert strip(read_metrics(straight, split)) == strip(read_metrics(resumed, split)), split
        assert read_checkpoint(straight, "best").step == read_checkpoint(resumed, "best").step


@pytest.fixture(scope="module")
def in_turn_run(soup_run, tmp_path_factory):
    """The fixture's soup with its members trained as one program stepping them in turn (soup_vmap='in_turn'),
    stopped at step 3 (stop_after_steps) and resumed by a rerun."""
    config = soup_run[2].copy_and_resolve_references()
    config.soup_vmap = "in_turn"
    stopped = config.copy_and_resolve_references()
    stopped.stop_after_steps = 3
    workdir = str(tmp_path_factory.mktemp("in_turn") / "soup")
    with session_compilation_cache(tmp_path_factory):
        assert soup_lib.train_soup(stopped, workdir) is None
        soup_lib.train_soup(config, workdir)
    return workdir


def test_members_stepped_in_turn_in_one_program_are_bitwise_the_members_trained_one_at_a_time(
    soup_run, in_turn_run, caplog
):
    for seed in (0, 1):
        alone, member = (soup_lib.member_workdir(w, seed) for w in (soup_run[0], in_turn_run))
        records = read_metrics(member, "run")
        assert [(r["step"], r["members_in_one_program"], r["resumed_from_step"]) for r in records] == [
            (3, 2, 0),
            (6, 2, 3),
        ]
        for step in (3, 6):
            a, b = (jax.tree_util.tree_leaves_with_path(read_checkpoint(m, step).state) for m in (alone, member))
            assert [p for p, _ in a] == [p for p, _ in b] and len(a) > 0
            for (path, x), (_, y) in zip(a, b):
                np.testing.assert_array_equal(
                    np.asarray(x), np.asarray(y), err_msg=f"{seed} {step} {jax.tree_util.keystr(path)}"
                )
        for split in ("train", "validation", "external"):
            strip = lambda rs: [{k: v for k, v in r.items() if k not in ("images_per_sec", "time")} for r in rs]  # noqa: E731
            assert strip(read_metrics(alone, split)) == strip(read_metrics(member, split)), (seed, split)
    # The two members differ (their own seeds): the comparison above is not of one model with itself.
    a, b = (read_checkpoint(soup_lib.member_workdir(in_turn_run, s), 6).state for s in (0, 1))
    assert not all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_members_stepped_in_turn_over_two_devices_are_bitwise_a_member_trained_alone_there(soup_run, tmp_path_factory):
    # The member's state leaves the stack and returns to it replicated over the mesh, its batch split
    # over the two devices as a run's is: seed 1's checkpoint equals seed 1 trained alone on two devices.
    config = soup_run[2].copy_and_resolve_references()
    config.num_devices, config.eval_every_steps = 2, 0
    root = tmp_path_factory.mktemp("in_turn_2")
    alone = config.copy_and_resolve_references()
    alone.seed, alone.soup_seeds, alone.soup_vmap = 1, 1, "off"
    config.soup_vmap = "in_turn"
    with session_compilation_cache(tmp_path_factory):
        soup_lib.train_soup(config, str(root / "soup"))
        train_and_evaluate(alone, str(root / "alone"))
    member = soup_lib.member_workdir(str(root / "soup"), 1)
    assert [r["members_in_one_program"] for r in read_metrics(member, "run")] == [2]
    a, b = (read_checkpoint(w, 6).state for w in (str(root / "alone"), member))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_members_stepped_in_turn_run_their_steps_at_the_same_time():
    # Each member's step waits at a barrier that opens only when both steps are inside it at
    # once: stepped one after the other, the first would time out there.
    barrier = threading.Barrier(2, timeout=60)
    threads = []

    def compiled(state, batch, images):
        threads.append(threading.get_ident())
        barrier.wait()
        return state + batch["label"].sum() + images, {"loss": jax.numpy.float32(state)}

    par = Parallel("jit", jax.devices()[:1])
    with ThreadPoolExecutor(2) as pool:
        stepped = feed_lib._in_turn(compiled, par, pool)
        batch = {"label": np.array([[1, 2], [3, 4]], np.int32)}
        states, metrics = stepped([np.float32(10), np.float32(20)], batch, np.float32(0.5))
    assert [float(x) for x in states] == [13.5, 27.5]  # each member its own batch row, in order
    np.testing.assert_array_equal(np.asarray(metrics["loss"]), [10.0, 20.0])
    assert len(set(threads)) == 2


@pytest.mark.parametrize("value", ["yes", True, 2])
def test_a_bad_soup_vmap_is_refused_in_one_line_naming_the_key(value):
    config = tiny_config(soup_seeds=2)
    with config.unlocked(), config.ignore_type():
        config.soup_vmap = value
    with pytest.raises(
        ValueError, match=r"config\.soup_vmap=.*expected one of 'auto', 'on', 'in_turn', 'off'"
    ) as raised:
        soup_lib.train_soup(config, "/nonexistent/never/made")
    assert errors.one_line(raised.value)[0] == errors.EXIT_USAGE
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"soup_vmap": "on", "data.resident": "off"}, r"streamed by grain \(data\.resident='off'\)"),
        ({"soup_vmap": "in_turn"}, r"they stopped at different steps \(.*seed_0: 3, .*seed_1: 0\)"),
        ({"soup_vmap": "auto"}, r"on a CPU the soup members train one after another"),
    ],
)
def test_members_that_cannot_share_a_program_train_one_after_another_saying_why(
    soup_run, tmp_path, monkeypatch, caplog, overrides, why
):
    _, members, config, _ = soup_run
    workdir = str(tmp_path / "again")
    if overrides["soup_vmap"] == "in_turn":  # seed 0 stopped at step 3, seed 1 not begun
        shutil.copytree(members[0], soup_lib.member_workdir(workdir, 0))
        shutil.rmtree(os.path.join(soup_lib.member_workdir(workdir, 0), "checkpoints", "6"))
    config = config.copy_and_resolve_references()
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        target = config
        for p in parents:
            target = target[p]
        target[leaf] = value
    trained = []
    monkeypatch.setattr(soup_lib, "train_and_evaluate", lambda cfg, run: trained.append((cfg.seed, run)))
    monkeypatch.setattr(soup_lib, "train_members", lambda *a: pytest.fail("trained as one program"))
    with caplog.at_level("INFO", logger="effnet_jax.train"):
        assert soup_lib.train_soup(config, workdir) is None
    assert trained == [(s, soup_lib.member_workdir(workdir, s)) for s in (0, 1)]
    lines = [r for r in caplog.records if "the soup members train one after another" in r.getMessage()]
    assert len(lines) == 1 and re.search(why, lines[0].getMessage())
    assert lines[0].levelname == ("INFO" if overrides["soup_vmap"] == "auto" else "WARNING")
