"""effnet-sweep: every point of a grid trained by the real trainer, a row each in sweep.csv, a rerun resumes."""

import csv
import json
import os
import pathlib

import pytest
from data_fixtures import jpeg, write_tree
from helpers import machinery_config, run_module, tiny_config

from effnet_jax import runs
from effnet_jax import sweep as sweep_lib
from effnet_jax.models.variants import TEST_VARIANT
from effnet_jax.runs.lock import WorkdirLock, WorkdirLockedError
from effnet_jax.runs.metrics_log import read_metrics

pytestmark = pytest.mark.slow  # trains two tiny points for real

SWEEP = ["seed=[0,1]", "class_weights=['none']"]
SCORES = [f"{split}_{name}" for split in ("validation", "external") for name, _ in sweep_lib.SCORES]
# test_soup.py's members train these very steps (6 steps, 1 device): the session cache compiles them once.
STEPS = dict(num_train_steps=6, eval_every_steps=0, checkpoint_every_steps=3, log_every_steps=3, num_devices=1)


def _config(external: str, **overrides):
    config = machinery_config(select_split="external", **STEPS, **overrides)
    config.data.external = (external,)
    return config


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A 1-point sweep stopped half way (config.stop_after_steps=3), then a 2-point one holding that point."""
    root = tmp_path_factory.mktemp("sweep")
    files = {f"NORMAL/n{i}.jpeg": jpeg(300 + i, size=(48, 40)) for i in range(4)}
    files.update({f"PNEUMONIA/p{i}.jpeg": jpeg(400 + i, size=(48, 40)) for i in range(6)})
    external = str(write_tree(root / "ext", files))
    workdir = str(root / "sweep")
    axes = [sweep_lib.parse_axis(s) for s in SWEEP]
    first = [sweep_lib.parse_axis("seed=[0]"), axes[1]]
    half = sweep_lib.run_sweep(_config(external, stop_after_steps=3), workdir, first, bootstrap_resamples=0)
    half_rows = _read_csv(half.csv)
    whole = sweep_lib.run_sweep(_config(external), workdir, axes, bootstrap_resamples=0)
    return workdir, external, half, half_rows, whole


def test_a_two_point_sweep_writes_a_row_per_point_with_its_overrides_and_scores(swept):
    workdir, _, _, _, whole = swept
    rows = _read_csv(os.path.join(workdir, "sweep.csv"))
    assert list(rows[0]) == ["seed", "class_weights", "point", "status", "step", "operating_threshold", *SCORES]
    assert [(r["seed"], r["class_weights"], r["status"]) for r in rows] == [
        ("0", "none", "done"),
        ("1", "none", "done"),
    ]
    assert sorted(os.listdir(os.path.join(workdir, "points"))) == sorted(r["point"] for r in rows)
    for row, seed in zip(rows, (0, 1)):
        run = runs.open(os.path.join(workdir, "points", row["point"]), "best")
        assert run.config.seed == seed and int(row["step"]) == run.step
        # The scores are the point's effnet-eval reports at its best step, at the operating threshold.
        for split in ("validation", "external"):
            with open(run.layout.eval_report(f"{split}_{run.step}")) as f:
                report = json.load(f)
            at = report["metrics"]["operating"]
            assert float(row["operating_threshold"]) == report["operating_threshold"]
            assert [float(row[f"{split}_{n}"]) for n, _ in sweep_lib.SCORES] == [at[k] for _, k in sweep_lib.SCORES]
    with open(whole.markdown) as f:
        table = [line for line in f.read().splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2 and table[0].startswith("| seed | class_weights | point |")


def test_a_half_trained_point_is_resumed_by_the_trainer(swept):
    workdir, _, half, half_rows, whole = swept
    assert [(r["point"], r["status"], r["step"]) for r in half_rows] == [(half.trained[0], "unfinished", "")]
    assert list(whole.trained) == [r["point"] for r in whole.rows] and whole.trained[0] == half.trained[0]
    resumed, fresh = (os.path.join(workdir, "points", p) for p in whole.trained)
    # One pass over steps 1-6 across both calls: the second started from the checkpoint at step 3.
    assert [r["step"] for r in read_metrics(resumed, "train")] == [3, 6]
    assert [r["resumed_from_step"] for r in read_metrics(resumed, "run")] == [0, 3]
    assert [r["resumed_from_step"] for r in read_metrics(fresh, "run")] == [0]


def test_a_rerun_of_the_same_command_trains_nothing_and_writes_the_same_csv(swept):
    workdir, external, _, _, _ = swept
    with open(os.path.join(workdir, "sweep.csv"), "rb") as f:
        before = f.read()
    # What training and evaluation wrote: neither trains nor evaluates again.
    points = pathlib.Path(workdir, "points")
    written = lambda: {
        str(p): p.stat().st_mtime_ns for p in [*points.glob("*/metrics.jsonl"), *points.glob("*/eval/*/metrics.json")]
    }
    before_files = written()
    assert len(before_files) == 2 * (1 + 2)  # per point: metrics.jsonl and the validation and external reports
    # As a user reruns it: effnet-sweep with configs/debug_synthetic.py and the test config's keys as flags.
    proc = run_module(
        "effnet_jax.cli.sweep",
        "--config=configs/debug_synthetic.py",
        f"--workdir={workdir}",
        *(f"--sweep={s}" for s in SWEEP),
        "--config.image_size=32",
        f"--config.model.name={TEST_VARIANT.name}",
        "--config.data.synthetic_examples=64",
        "--config.model.depthwise_impl=native",
        "--config.batch_size=16",
        "--config.eval_batch_size=16",
        "--config.progress_bar=False",
        "--config.select_split=external",
        f"--config.data.external=('{external}',)",
        *(f"--config.{k}={v}" for k, v in STEPS.items()),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        proc.stdout.splitlines()[-1]
        == f"effnet-sweep: 2 points (0 trained now) in {workdir}: sweep.csv, sweep.md, points/"
    )
    with open(os.path.join(workdir, "sweep.csv"), "rb") as f:
        assert f.read() == before
    assert written() == before_files


def test_a_rerun_under_another_config_is_refused_before_it_reuses_a_point(swept):
    workdir, external, _, _, _ = swept
    points = pathlib.Path(workdir, "points")
    before = {str(p): p.stat().st_mtime_ns for p in [*points.rglob("*"), pathlib.Path(workdir, "sweep.csv")]}
    axes = [sweep_lib.parse_axis(s) for s in SWEEP]
    changed = _config(external)
    changed.optimizer.learning_rate = 0.123
    with pytest.raises(sweep_lib.SweepConfigChangedError) as e:
        sweep_lib.run_sweep(changed, workdir, axes, bootstrap_resamples=0)
    stored = json.loads(pathlib.Path(workdir, sweep_lib.BASE_CONFIG).read_text())
    assert str(e.value) == (
        f"{workdir}: swept before under another config (optimizer.learning_rate: "
        f"{stored['optimizer.learning_rate']!r} then, 0.123 now); its finished points would be reused as this "
        "config's. Sweep into another --workdir, or rerun with the config in sweep_config.json"
    )
    # The swept keys and the keys that only change how a point runs are not part of it.
    assert "seed" not in stored and "class_weights" not in stored and "stop_after_steps" not in stored
    assert {p: os.stat(p).st_mtime_ns for p in before if os.path.exists(p)} == before


@pytest.mark.parametrize("planted", ["[1, 2]", "{", "x" * (sweep_lib.MAX_BASE_CONFIG_BYTES + 1)])
def test_a_planted_sweep_config_is_one_line_naming_it(planted, tmp_path):
    (tmp_path / sweep_lib.BASE_CONFIG).write_text(planted)
    with pytest.raises(sweep_lib.SweepFolderError, match=f"^{tmp_path / sweep_lib.BASE_CONFIG}: "):
        sweep_lib.run_sweep(tiny_config(), str(tmp_path), [sweep_lib.parse_axis("seed=[0]")])
    assert not os.path.exists(tmp_path / "points")


def test_a_second_sweep_on_the_same_workdir_is_refused(tmp_path):
    lock = WorkdirLock(str(tmp_path)).acquire()
    try:
        with pytest.raises(WorkdirLockedError, match=str(tmp_path)):
            sweep_lib.run_sweep(tiny_config(), str(tmp_path), [sweep_lib.parse_axis("seed=[0]")])
    finally:
        lock.release()
    assert not os.path.exists(tmp_path / "points")


@pytest.mark.parametrize(
    "specs, message",
    [
        (
            ["optimizer.learning_rat=[1e-3]"],
            "--sweep optimizer.learning_rat: not a config key (the schema, effnet_jax/train/config.py, lists "
            "every key); did you mean optimizer.learning_rate, optimizer.probe_learning_rate?",
        ),
        (["optimizer=[1]"], "--sweep optimizer: names a group of keys; sweep one of its keys (optimizer.NAME)"),
        (
            ["data.balance=[none]"],
            "--sweep data.balance=[none]: not a Python literal; expected a list like [1e-3, 5e-4] "
            "(strings quoted: ['none', 'oversample'])",
        ),
        (["seed=[]"], "--sweep seed=[]: an empty list; give at least one value"),
        (["seed=[1,1]"], "--sweep seed=[1,1]: a value is repeated; each point of the grid must differ"),
        (["seed=[0]", "seed=[1]"], "--sweep seed: given twice; put all its values in one list"),
        (["seed"], "--sweep=seed: expected KEY=[VALUE, ...], e.g. --sweep='optimizer.learning_rate=[1e-3,5e-4]'"),
        ([], "no --sweep flag: give at least one, e.g. --sweep='seed=[0,1]'"),
    ],
)
def test_a_bad_sweep_flag_is_one_line_naming_it(specs, message, tmp_path):
    with pytest.raises(sweep_lib.SweepError) as e:
        sweep_lib.plan(tiny_config(), str(tmp_path), [sweep_lib.parse_axis(s) for s in specs])
    assert str(e.value) == message


def test_a_value_of_the_wrong_type_or_outside_the_schema_names_the_key(tmp_path):
    with pytest.raises(sweep_lib.SweepError, match=r"^--sweep seed: the value 'a' does not fit config\.seed "):
        sweep_lib.plan(tiny_config(), str(tmp_path), [sweep_lib.parse_axis("seed=['a']")])
    # The schema's own checks (validate_config) run on every point before anything trains.
    with pytest.raises(ValueError, match=r"^config\.loss='nope': expected "):
        sweep_lib.plan(tiny_config(), str(tmp_path), [sweep_lib.parse_axis("loss=['softmax_ce', 'nope']")])
    assert not os.path.exists(tmp_path / "points")


def test_point_folders_are_safe_names_distinct_for_distinct_points():
    a = sweep_lib.point_slug({"data.external": ("../../etc",), "seed": 0})
    b = sweep_lib.point_slug({"data.external": ("../..:etc",), "seed": 0})
    assert a != b and "/" not in a + b and not a.startswith(".")
    assert a.startswith("data.external_.._.._etc_seed_0-")
