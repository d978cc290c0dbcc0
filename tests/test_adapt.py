"""effnet-adapt: BatchNorm statistics re-estimated on a site's unlabeled images, written as a new run."""

import dataclasses
import io
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from data_fixtures import write_tree
from flax import traverse_util
from helpers import machinery_config, run_module, session_compilation_cache
from PIL import Image

from effnet_jax import runs
from effnet_jax.cli import errors
from effnet_jax.inference import adaptation
from effnet_jax.inference.batchnorm_stats import adapt_batch_stats
from effnet_jax.inference.evaluation import evaluate_checkpoint
from effnet_jax.inference.prediction import Predictor, Preprocessor
from effnet_jax.inference.thresholds import operating_threshold
from effnet_jax.reporting import model_card
from effnet_jax.runs import checkpoints as checkpoint_lib
from effnet_jax.runs.layout import Layout
from effnet_jax.train import loop
from effnet_jax.train import soup as soup_lib

STATS = ("batch_stats", "ema_batch_stats")


def _png(seed: int, size=(40, 36)) -> bytes:
    """Bright, low-contrast noise with a gradient: far from the synthetic training images' levels."""
    rng = np.random.default_rng(seed)
    w, h = size
    gray = 170 + 40 * np.linspace(0, 1, w)[None, :] + rng.integers(0, 40, (h, w))
    out = io.BytesIO()
    Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8), "L").save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Nine images in nested folders (their names are no labels to effnet-adapt)."""
    root = tmp_path_factory.mktemp("site") / "images"
    files = {f"{'NORMAL' if i % 2 else 'PNEUMONIA'}/scan_{i}.png": _png(i) for i in range(7)}
    files.update({"deeper/more/a.png": _png(7), "b.png": _png(8)})
    return str(write_tree(root, files))


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """``{'workdir'}``: a 6-step run of the test network (adapting walks its BatchNorm layers, whatever the network)."""
    workdir = str(tmp_path_factory.mktemp("source") / "run")
    # test_sweep.py trains these very steps: the session cache compiles them once.
    config = machinery_config(
        num_train_steps=6, eval_every_steps=0, checkpoint_every_steps=3, log_every_steps=3, num_devices=1
    )
    with session_compilation_cache(tmp_path_factory):
        loop.train_and_evaluate(config, workdir)
    return {"workdir": workdir}


@pytest.fixture(scope="module")
def adapted(source_run, site, tmp_path_factory):
    """``(source Run, adapted Run, adapted.json)``: the module's tiny run adapted to ``site`` in batches of 4."""
    out = str(tmp_path_factory.mktemp("adapted") / "new")
    record = adaptation.adapt_run(source_run["workdir"], site, out, batch_size=4)
    return runs.open(source_run["workdir"]), runs.open(out), record


def _site_images(run, site):
    return adaptation.read_site_images(site, Preprocessor.for_run(run)).images


def _states(source, new):
    return (
        checkpoint_lib.read_state(source.workdir, source.step),
        checkpoint_lib.read_state(new.workdir, new.step),
    )


def test_the_first_norm_holds_the_population_statistics_of_its_input(adapted, site):
    source, new, record = adapted
    images = _site_images(source, site)
    assert record["images_used"] == len(images) == 9 and record["images_skipped"] == 0
    for use_ema in (True, False):  # the run kept EMA weights: both pairs are adapted
        variables = source.variables(use_ema)
        _, state = jax.jit(
            lambda v, x: source.model().apply(
                v, x, train=False, capture_intermediates=lambda m, _: m.name == "conv_stem"
            )
        )(variables, images)
        stem = np.asarray(state["intermediates"]["conv_stem"]["__call__"][0], np.float64)
        got = new.variables(use_ema)["batch_stats"]["bn1"]
        np.testing.assert_allclose(got["mean"], stem.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["var"], stem.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
        assert not np.allclose(got["mean"], variables["batch_stats"]["bn1"]["mean"], atol=1e-3)


def test_every_norm_equals_training_mode_with_all_the_images_as_one_batch(adapted, site):
    source, new, _ = adapted
    images = _site_images(source, site)
    model = source.model()
    # Training-mode BatchNorm over the whole set, no stochastic depth or dropout, momentum 0:
    # each layer normalised by the statistics of its input over every image.
    whole = model.clone(drop_path_rate=0.0, drop_rate=0.0, variant=dataclasses.replace(model.variant, bn_momentum=0.0))
    _, state = jax.jit(lambda v, x: whole.apply(v, x, train=True, mutable=["batch_stats"]))(source.variables(), images)
    want = traverse_util.flatten_dict(jax.device_get(state["batch_stats"]))
    got = traverse_util.flatten_dict(new.variables()["batch_stats"])
    # A depthwise-separable block has two norms, an inverted residual three; the stem and head one each.
    blocks = [b for stage in model.variant.block_defs() for b in stage]
    norms = 2 + sum(2 if b.block_type == "ds" else 3 for b in blocks)
    assert got.keys() == want.keys() and len(got) == 2 * norms
    for key in want:  # the reference's E[x^2] - E[x]^2 in float32 rounds worse than ours
        np.testing.assert_allclose(got[key], want[key], rtol=2e-3, atol=2e-4, err_msg="/".join(key))


def test_everything_but_the_statistics_is_bitwise_the_sources(adapted):
    source, new, _ = adapted
    before, after = _states(source, new)
    assert new.step == source.step and new.config.to_dict() == source.config.to_dict()
    assert new.record == source.record
    leaves_before = jax.tree_util.tree_leaves_with_path(before)
    leaves_after = jax.tree_util.tree_leaves_with_path(after)
    assert [p for p, _ in leaves_before] == [p for p, _ in leaves_after]
    changed = {
        jax.tree_util.keystr(path)
        for (path, a), (_, b) in zip(leaves_before, leaves_after)
        if not np.array_equal(np.asarray(a), np.asarray(b))
    }
    # Means and variances of both statistics trees (EMA kept), nothing else.
    assert changed and all(p.startswith(("['batch_stats']", "['ema_batch_stats']")) for p in changed)
    assert {p.startswith("['ema_batch_stats']") for p in changed} == {True, False}
    assert {p.rsplit("[", 1)[1] for p in changed} == {"'mean']", "'var']"}


def test_mix_blends_and_mix_zero_gives_the_source_statistics_bitwise(adapted, site):
    source, new, _ = adapted
    images = _site_images(source, site)
    variables = source.variables()
    same = adapt_batch_stats(source.model(), variables, images, batch_size=4, mix=0.0).batch_stats
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(variables["batch_stats"])):
        np.testing.assert_array_equal(a, np.asarray(b))
    # mix=1 equals the run's; the first norm at mix=0.5 is halfway (its input depends on no norm).
    half = adapt_batch_stats(source.model(), variables, images, batch_size=4, mix=0.5).batch_stats
    full, old = new.variables()["batch_stats"]["bn1"], variables["batch_stats"]["bn1"]
    for name in ("mean", "var"):
        np.testing.assert_allclose(half["bn1"][name], (full[name] + np.asarray(old[name])) / 2, rtol=1e-5, atol=1e-6)


def test_neither_the_batch_size_nor_the_order_of_the_images_changes_the_statistics(adapted, site):
    source, new, _ = adapted
    images = _site_images(source, site)
    reordered = images[np.random.default_rng(0).permutation(len(images))]
    got = adapt_batch_stats(source.model(), source.variables(), reordered, batch_size=9).batch_stats
    want = new.variables()["batch_stats"]  # batches of 4, sorted order
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4, err_msg=jax.tree_util.keystr(path))


def test_the_file_list_hash_names_the_images_wherever_the_folder_is(adapted, site, tmp_path):
    source, new, record = adapted
    moved = str(tmp_path / "elsewhere")
    shutil.copytree(site, moved)
    again = adaptation.read_site_images(moved, Preprocessor.for_run(source))
    assert again.sha256 == record["files_sha256"] == new.adapted["files_sha256"]
    assert again.files[0] == "NORMAL/scan_1.png" and len(again.files) == 9
    assert new.adapted["source"] == source.workdir and new.adapted["mix"] == 1.0
    assert [r["split"] for r in new.metrics][-1] == "adapt"
    card = model_card.render_model_card(new)
    assert "effnet-adapt on 9 unlabeled images" in card and record["files_sha256"][:12] in card


def test_eval_and_predict_read_the_new_run_and_keep_the_sources_threshold(adapted, site, tmp_path):
    source, new, _ = adapted
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(site) for f in names)
    before = [r["prob_pneumonia"] for r in Predictor(source).predict(files)]
    after = [r["prob_pneumonia"] for r in Predictor(new).predict(files)]
    assert len(after) == 9 and np.max(np.abs(np.subtract(before, after))) > 1e-3
    assert operating_threshold(new) == operating_threshold(source)
    report = evaluate_checkpoint(new, split="validation", bootstrap_resamples=0, progress=False, out_dir=str(tmp_path))
    assert report.step == source.step and report.num_examples > 0
    assert not os.path.exists(source.layout.adapted)


def _copy_with_seed(src: str, dst: str, seed: int, scale: float) -> None:
    """A copy of run ``src`` whose config says ``seed`` and whose weights are scaled: another member."""
    shutil.copytree(src, dst)
    saved = checkpoint_lib.read_checkpoint(src, "latest")
    data = checkpoint_lib.read_data_state(src, saved.step)
    shutil.rmtree(Layout(dst).checkpoints)
    state = dict(saved.state)
    for key in ("params", "ema_params"):
        state[key] = jax.tree.map(lambda x: np.asarray(x) * scale, state[key])
    config = saved.config
    config.seed = seed
    with open(Layout(dst).config, "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    checkpoint_lib.write_checkpoint(dst, saved.step, state, data, config, run=saved.run)


def test_a_soup_has_every_member_and_itself_adapted(source_run, site, tmp_path):
    root = str(tmp_path / "soup")
    members = [Layout(root).member(seed) for seed in (0, 1)]
    for seed, member in enumerate(members):
        _copy_with_seed(source_run["workdir"], member, seed, 1.0 + 0.2 * seed)
    # A weight soup: its evaluation compiles what the session's run already compiled.
    soup_lib.make_soup(members, root, combine="weights")
    out = str(tmp_path / "adapted")
    record = adaptation.adapt_run(root, site, out, batch_size=4)
    new_members = [Layout(out).member(seed) for seed in (0, 1)]
    assert record["members_adapted"] == new_members
    images = _site_images(runs.open(root), site)
    for source, adapted in [*zip(members, new_members), (root, out)]:
        source, adapted = runs.open(source), runs.open(adapted)
        want = adapt_batch_stats(source.model(), source.variables(), images, 4).batch_stats
        for a, b in zip(jax.tree.leaves(adapted.variables()["batch_stats"]), jax.tree.leaves(want)):
            np.testing.assert_array_equal(a, b)
        assert adapted.adapted["source"] == source.workdir and adapted.step == source.step
    whole = runs.open(out)
    assert whole.soup["members"][1]["workdir"] == new_members[1] and whole.config.soup.members == new_members
    assert not np.array_equal(
        runs.open(new_members[0]).variables()["batch_stats"]["bn1"]["var"],
        runs.open(new_members[1]).variables()["batch_stats"]["bn1"]["var"],
    )


def test_a_seed_ensemble_adapts_each_member_on_its_own(adapted, site):
    source = adapted[0]
    images = _site_images(source, site)
    state = checkpoint_lib.read_state(source.workdir, source.step)
    scaled = jax.tree.map(lambda x: np.asarray(x) * 1.2, state["params"])
    stacked = {
        k: jax.tree.map(lambda a, b: np.stack([np.asarray(a), np.asarray(b)]), state[k], other)
        for k, other in (("params", scaled), ("batch_stats", state["batch_stats"]))
    }
    config = source.config.copy_and_resolve_references()
    config.soup = {"members": ["a", "b"], "combine": "logits"}
    ensemble = dataclasses.replace(source, config=config)
    site_images = adaptation.read_site_images(site, Preprocessor.for_run(source))
    got = adaptation.adapted_state(ensemble, stacked, site_images, 4, 1.0, {})["batch_stats"]
    for i, params in enumerate((state["params"], scaled)):
        variables = {"params": params, "batch_stats": state["batch_stats"]}
        want = adapt_batch_stats(source.model(), variables, images, 4).batch_stats
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(a[i], b)


@pytest.mark.parametrize("case", ["empty", "corrupt", "not_empty", "same", "inside"])
def test_bad_input_is_one_line_and_nothing_is_written(case, source_run, site, tmp_path):
    workdir = source_run["workdir"]
    images, out = site, str(tmp_path / "new")
    listing = sorted(os.listdir(workdir))
    if case == "empty":
        images = str(tmp_path / "empty")
        os.makedirs(os.path.join(images, "NORMAL"))
    elif case == "corrupt":
        images = str(write_tree(tmp_path / "corrupt", {"a.png": b"not a png", "b/c.jpeg": b"\xff\xd8 cut"}))
    elif case == "not_empty":
        write_tree(tmp_path / "new", {"notes.txt": b"mine"})
    elif case == "same":
        out = workdir
    else:
        out = os.path.join(workdir, "adapted")
    expected = {
        "empty": "no image files in it",
        "corrupt": "none of its 2 image files could be read",
        "not_empty": "exists and is not an empty folder",
        "same": "is the source run",
        "inside": "is inside the source run",
    }[case]
    with pytest.raises(adaptation.AdaptError, match=expected):
        adaptation.adapt_run(workdir, images, out)
    assert sorted(os.listdir(workdir)) == listing
    if case == "not_empty":
        assert os.listdir(out) == ["notes.txt"]
    elif case not in ("same",):
        assert not os.path.exists(out)


def test_the_command_refuses_an_empty_folder_in_one_line(source_run, tmp_path):
    os.makedirs(tmp_path / "empty")
    out = tmp_path / "new"
    result = run_module(
        "effnet_jax.cli.adapt", f"--workdir={source_run['workdir']}", f"--images={tmp_path / 'empty'}", f"--out={out}"
    )
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("effnet-adapt:")]
    assert lines == [
        f"effnet-adapt: error: --images={tmp_path / 'empty'}: no image files in it (looked for .jpeg, .png, ... recursively)"
    ]
    assert not out.exists()


_DISK_FULL = """
import errno, sys
from effnet_jax.inference import adaptation
def full(path, text):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))
adaptation.write_text = full
sys.argv = ["effnet-adapt"] + sys.argv[1:]
from effnet_jax.cli.adapt import run
run()
"""


def test_a_full_disk_while_adapting_exits_5_in_one_line(source_run, site, tmp_path):
    # Before: the OSError's traceback, after all the work.
    out = tmp_path / "new"
    proc = subprocess.run(
        [sys.executable, "-c", _DISK_FULL, f"--workdir={source_run['workdir']}", f"--images={site}", f"--out={out}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == errors.EXIT_DISK, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"effnet-adapt: cannot write {out}/config.json: No space left on device (errno ENOSPC)"
    )
    assert "Traceback" not in proc.stderr
