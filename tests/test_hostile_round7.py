"""Hostile inputs, round 7: batch sizes that are no batch, outputs written through planted links, reports skipped unsaid.

Each case failed before the fix it names: ``--batch_size=0`` was taken as 1 (effnet-eval even
took it as "the run's"), an ``eval_batch_size`` of 2**30 let training run until its first
evaluation padded a batch of a billion images, a ``config.json`` link planted in a workdir
ended effnet-train in a traceback, ``effnet-data report`` / ``clean`` wrote their JSON and
figures through links planted in ``--out``, and a malformed evaluation report was skipped by
the threshold and sweep readers without a word.
"""

import json
import logging
import os

import cleaning_fixtures as cf
import pytest
from helpers import hand_made_run, run_module

from effnet_jax import limits
from effnet_jax.cli import data as data_cli
from effnet_jax.data import exclusions
from effnet_jax.output_files import UnsafeOutputError


@pytest.mark.parametrize("value", [0, -3, True, 2.5, "8"])
def test_a_batch_size_below_one_or_not_an_integer_is_refused_naming_the_key(value):
    with pytest.raises(ValueError, match=r"^--batch_size=.*: expected an integer >= 1$"):
        limits.padded_batch_size(value, 224, "--batch_size")


def test_a_batch_size_over_the_budget_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"config.eval_batch_size=1073741824.*over the decoded-size budget"):
        limits.padded_batch_size(2**30, 224, "config.eval_batch_size")
    assert limits.padded_batch_size(64, 224) == 64


@pytest.mark.parametrize("module", ["evaluate", "predict", "adapt"])
def test_batch_size_zero_is_a_flag_error_not_one_image(module, tmp_path):
    extra = {"predict": ["x.png"], "adapt": [f"--images={tmp_path}", f"--out={tmp_path}/out"]}.get(module, [])
    done = run_module(f"effnet_jax.cli.{module}", f"--workdir={tmp_path}", "--batch_size=0", *extra)
    assert done.returncode != 0
    assert "--batch_size=0: 0 is not a positive integer" in done.stderr
    assert "Traceback" not in done.stderr


def _train(workdir, *overrides):
    return run_module(
        "effnet_jax.cli.train",
        "--config=configs/debug_synthetic.py",
        f"--workdir={workdir}",
        "--config.num_train_steps=2",
        "--config.image_size=32",
        *overrides,
    )


def test_training_refuses_an_eval_batch_the_budget_cannot_hold_before_its_first_step(tmp_path):
    done = _train(tmp_path / "run", f"--config.eval_batch_size={2**30}")
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("effnet-train: config.eval_batch_size=1073741824: a batch of 1,073,741,824 images")
    assert "step 1/" not in done.stderr  # refused before training, not at the first evaluation
    assert not list((tmp_path / "run").glob("checkpoints/*"))


def test_training_refuses_a_config_json_link_planted_in_the_workdir_in_one_line(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours\n")
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").symlink_to(outside)
    done = _train(workdir)
    assert done.returncode == 4, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"effnet-train: --workdir={workdir}/config.json: is a symbolic link; refusing to write through it"
    )
    assert "Traceback" not in done.stderr
    assert outside.read_text() == "not yours\n"


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory):
    return cf.write(tmp_path_factory.mktemp("raw") / "chest_xray")


@pytest.mark.parametrize(
    "command, planted",
    [
        ("report", "report.json"),
        ("report", "samples.png"),
        ("clean", "cleaning.json"),
        ("clean", "exclusions.json"),
        ("clean", "exclusions.csv"),
    ],
)
def test_effnet_data_never_writes_through_a_link_planted_in_its_out_folder(
    command, planted, raw_tree, tmp_path, capsys
):
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / planted).symlink_to(outside)
    status = data_cli.main([command, "--data_dir", str(raw_tree), "--out", str(out), "--no_progress"])
    assert status == 2
    assert f"{out / planted}: is a symbolic link; refusing to write through it" in capsys.readouterr().err
    assert outside.read_text() == "not yours\n"


def test_an_exclusion_list_is_not_written_through_a_link(tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    (tmp_path / "list.json").symlink_to(outside)
    with pytest.raises(UnsafeOutputError, match="list.json: is a symbolic link"):
        exclusions.write(tmp_path / "list.json", [{"file": "train/NORMAL/a.jpeg", "reason": "duplicate"}])
    assert outside.read_text() == "{}"


def test_a_report_the_readers_skip_is_said_naming_it(tmp_path, caplog):
    run = hand_made_run(tmp_path, {"data": {"name": "chest_xray"}})
    good, bad = tmp_path / "eval" / "validation", tmp_path / "eval" / "external_a"
    good.mkdir(parents=True)
    bad.mkdir()
    (good / "metrics.json").write_text(json.dumps({"step": 7, "validation_threshold": 0.4}))
    (bad / "metrics.json").write_text(json.dumps({"step": "seven", "validation_threshold": 0.9}))
    with caplog.at_level(logging.WARNING, logger="effnet_jax.runs.run"):
        found = run.eval_reports()
    assert [os.path.basename(os.path.dirname(p)) for p, _ in found] == ["validation"]
    skipped = [r.getMessage() for r in caplog.records if "skipped an evaluation report" in r.getMessage()]
    assert len(skipped) == 1 and str(bad / "metrics.json") in skipped[0]
    with pytest.raises(ValueError, match="external_a/metrics.json"):
        run.eval_reports(strict=True)


def test_available_memory_reads_memavailable_and_is_none_when_unknown(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   21000000 kB\n")
    assert limits.available_memory(str(meminfo)) == 21_000_000 * 1024
    meminfo.write_text("MemTotal:       24000000 kB\n")
    assert limits.available_memory(str(meminfo)) is None
    assert limits.available_memory(str(tmp_path / "missing")) is None


def test_a_state_sized_by_its_own_config_must_still_fit_the_memory_the_machine_has(tmp_path, monkeypatch):
    # The allowance grows with the model the run's config names; a downloaded config can name any.
    import shutil

    from helpers import stand_in_run
    from test_hostile_round3_runs import _forge_array

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
