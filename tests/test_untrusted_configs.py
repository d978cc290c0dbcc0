"""Config values and command-line flags: each refused in one line naming the key or flag, before any work.

A config may come from a file someone shares or from --config.KEY=VALUE, a flag from anywhere it
was pasted. validate_config (and so effnet-train --dry_run) refuses a value the run would only read
late, one that sizes processes, batches or memory past the budget, and NaN; flags are parsed, never
evaluated, and shortened when echoed. Each known cause of a failure is one line with its exit status
(docs/untrusted-inputs.md).
"""

import dataclasses
import os
import re
import subprocess
import sys

import data_fixtures as fx
import jax
import ml_collections
import portpicker
import pytest
from data_fixtures import GOOD_TREE, write_tree
from helpers import REPO, run_module, tiny_config, train_synthetic

from effnet_jax import limits, runs, sweep
from effnet_jax.cli import data as data_cli
from effnet_jax.cli import errors
from effnet_jax.labels import CLASS_NAMES, class_weights
from effnet_jax.train.config import get_config, require_batches_fit_devices, validate_config

# --- config values: validate_config ---------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("image_size", 0, "config.image_size=0: expected None (the variant's) or an integer from 32 to 1024"),
        ("image_size", 100000, "config.image_size=100000: expected None (the variant's) or an integer from 32 to 1024"),
        ("batch_size", -4, "config.batch_size=-4: expected an integer >= 1"),
        ("log_every_steps", 0, "config.log_every_steps=0: expected an integer >= 1"),
        ("ema_decay", 2.0, "config.ema_decay=2.0: expected a number in [0, 1) (0 = no EMA)"),
        ("model.name", "efficientnet_b9", "config.model.name='efficientnet_b9': not a variant; did you mean "),
        ("data.on_bad_image", "maybe", "config.data.on_bad_image='maybe': expected one of 'error', 'skip'"),
        ("data.balance", "over", "config.data.balance='over': expected one of 'none', 'oversample', 'undersample'"),
        ("model.name", "resnet50", "config.model.name='resnet50': not a variant; one of efficientnet_b0, "),
    ],
)
def test_bad_config_values_are_refused_naming_the_key(key, value, message):
    config = tiny_config(**{key: value})
    with pytest.raises(ValueError) as info:
        validate_config(config)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert errors.one_line(info.value)[0] == errors.EXIT_USAGE
    validate_config(tiny_config())  # the tests' own config is valid


@pytest.mark.parametrize(
    "key, value, why",
    [
        ("data.num_workers", -1, "an integer from 0"),
        ("data.num_workers", 100_000, "an integer from 0 .* to 256"),
        ("data.prefetch_buffer", -1, "an integer from 1 to 256"),
        ("data.max_size", 0, "an integer from 8 to 16384"),
        ("data.center_crop", 0.0, r"a fraction in \(0, 1\]"),
        ("data.center_crop", float("nan"), r"a fraction in \(0, 1\]"),
        ("data.center_crop", 5.0, r"a fraction in \(0, 1\]"),
        ("data.synthetic_examples", 10**12, "an integer from 4 to 1,000,000"),
    ],
)
def test_data_keys_that_size_processes_or_memory_are_refused_naming_the_key(key, value, why):
    # Before: a dry run with data.synthetic_examples=10**12 was killed by the OOM killer (16 GB);
    # num_workers=100000 would fork that many grain workers; max_size=0 exported a model serving refuses.
    config = tiny_config(**{key: value})
    with pytest.raises(ValueError, match=re.escape(f"config.{key}={value!r}: expected ") + why):
        validate_config(config)


def test_the_shipped_data_values_pass():
    validate_config(tiny_config(**{"data.num_workers": 8, "data.center_crop": 0.9, "data.max_size": 36}))


@pytest.mark.parametrize(
    "key, value, why",
    [
        ("operating_sensitivity", float("nan"), r"a fraction in \(0, 1\]"),
        ("operating_sensitivity", 5.0, r"a fraction in \(0, 1\]"),
        ("schedule.warmup_epochs", float("nan"), "a finite number >= 0"),
        ("eval_every_epochs", float("nan"), "a finite number >= 0"),
    ],
)
def test_config_keys_that_were_taken_as_nan_are_refused_naming_the_key(key, value, why):
    # Before: accepted; a NaN warmup made every learning rate NaN, a NaN sensitivity failed in evaluation.
    from effnet_jax.train.config import validate_config

    with pytest.raises(ValueError, match=re.escape(f"config.{key}={value!r}: expected ") + why):
        validate_config(tiny_config(**{key: value}))


@pytest.mark.parametrize(
    "key, value",
    [
        ("optimizer.b1", float("nan")),
        ("optimizer.b2", 2.0),
        ("optimizer.momentum", float("nan")),
        ("optimizer.rmsprop_decay", 1.0),
        ("optimizer.eps", -1.0),
        ("optimizer.weight_decay", float("inf")),
        ("optimizer.grad_clip_norm", -1.0),
        ("optimizer.layer_decay", 0.0),
        ("schedule.min_lr_ratio", float("nan")),
        ("schedule.decay_epochs", 0.0),
        ("schedule.decay_rate", float("-inf")),
        ("early_stopping.min_delta", float("nan")),
        ("early_stopping.patience", -1),
        ("seed", -1),
        ("seed", 2**64),
        ("data.split_seed", -1),
        ("num_devices", -3),
    ],
)
def test_optimizer_schedule_and_seed_values_are_refused_naming_the_key(key, value):
    # Each was taken: a NaN b1 or infinite weight decay trained to a NaN loss blamed on the learning rate,
    # a NaN min_lr_ratio failed after training with a traceback, a negative seed failed in numpy after the
    # compile, a negative grad_clip_norm or patience changed the run silently.
    config = tiny_config(**{key: value})
    with pytest.raises(ValueError, match=rf"^config\.{key.replace('.', chr(92) + '.')}=") as caught:
        validate_config(config)
    assert "\n" not in str(caught.value)


def test_the_shipped_optimizer_values_still_pass():
    validate_config(tiny_config())
    validate_config(tiny_config(**{"optimizer.momentum": 0.0, "optimizer.b1": 0.0, "schedule.min_lr_ratio": 1.0}))


@pytest.mark.parametrize(
    "key, value, said",
    [
        ("model.depthwise_impl", "bogus", "config.model.depthwise_impl='bogus': expected one of 'auto'"),
        ("optimizer.name", "adamx", "config.optimizer.name='adamx': expected one of 'adamw'"),
        ("schedule.name", "cosin", "config.schedule.name='cosin': expected one of 'cosine'"),
        ("data.split_protocol", "../x", "config.data.split_protocol='../x': expected one of 'patient'"),
        ("data.pooled_group", "bogus", "config.data.pooled_group='bogus': expected one of 'image'"),
        ("soup_combine", "mean", "config.soup_combine='mean': expected one of 'weights'"),
        ("operating_threshold", "0.5", "config.operating_threshold='0.5': expected one of 'auto'"),
        ("soup_seeds", 0, "config.soup_seeds=0: expected an integer >= 1, at most 64"),
        ("soup_seeds", 100_000, "config.soup_seeds=100000: expected an integer >= 1, at most 64"),
        ("data.val_fraction", 0.0, "config.data.val_fraction=0.0: expected a fraction in (0, 1)"),
        ("data.val_fraction", float("nan"), "config.data.val_fraction=nan: expected a fraction in (0, 1)"),
        ("data.pooled_fractions", (0.6, 0.2, 0.3), "config.data.pooled_fractions=(0.6, 0.2, 0.3): expected 3"),
        ("data.pooled_fractions", (1.2, -0.4, 0.2), "config.data.pooled_fractions=(1.2, -0.4, 0.2): expected 3"),
        ("class_weights", "1,nan", "config.class_weights='1,nan': expected finite weights >= 0, not all 0"),
        ("class_weights", "-1,1", "config.class_weights='-1,1': expected finite weights >= 0"),
        ("class_weights", "0,0", "config.class_weights='0,0': expected finite weights >= 0, not all 0"),
        ("class_weights", "1,2,3", "config.class_weights='1,2,3': expected 'none', 'balanced' or"),
        ("freeze", ("[",), "config.freeze[0]='[' is not a valid regex"),
        ("freeze_until", "blocks", "config.freeze_until='blocks': expected 'blocks_S'"),
        ("select_split", "external", "config.select_split='external': expected one of ['validation'] (external"),
        ("model.pretrained", "/nonexistent/w.pth", "config.model.pretrained='/nonexistent/w.pth': not a weight"),
        ("model.pretrained", "/dev/zero", "config.model.pretrained='/dev/zero': not a weight file"),
    ],
)
def test_a_value_the_run_reads_late_is_refused_naming_its_key(key, value, said):
    with pytest.raises(ValueError) as info:
        validate_config(tiny_config(**{key: value}))
    assert str(info.value).startswith(said) and "\n" not in str(info.value)


def test_the_values_those_keys_accept_still_pass(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    for overrides in (
        {"operating_threshold": "", "class_weights": "balanced", "freeze_until": "blocks_2", "soup_seeds": 64},
        {"data.external": (str(tmp_path),), "select_split": "external", "model.pretrained": str(weights)},
        {"model.pretrained": "timm/efficientnet_b0.ra_in1k", "freeze": ("^blocks_0_",), "class_weights": "1,2.5"},
        {"data.split_protocol": "pooled", "data.pooled_fractions": (0.6, 0.2, 0.2), "data.pooled_group": "patient"},
    ):
        validate_config(tiny_config(**overrides))


def test_class_weights_refuse_a_nan_weight_at_run_time_too():
    # The trainer calls it with the training split's counts, after validate_config.
    with pytest.raises(ValueError, match=r"^config\.class_weights='nan,1': expected finite weights"):
        class_weights("nan,1", [10, 20])


def test_metric_keys_are_checked_against_the_tasks_own_classes():
    config = get_config()
    config.data.class_names = ("A", "B", "C")
    config.best_metric = "auc_C"  # a per-class metric of this task
    validate_config(config)
    config.early_stopping.metric = "sensitivity_threshold"  # logged for two classes only
    with pytest.raises(
        ValueError, match=r"^config\.early_stopping\.metric='sensitivity_threshold': not a metric .*auc_A"
    ):
        validate_config(config)
    # A folder task's classes are read from its folder later (loop.resolve_data checks again then).
    config = get_config()
    config.data.name, config.best_metric = "folder", "auc_B"
    validate_config(config)


# --- run lengths, seeds and batch sizes -----------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, why",
    [
        ({"num_epochs": 1e300, "num_train_steps": 0}, "config.num_epochs=1e+300: "),
        ({"num_train_steps": 10**30}, f"config.num_train_steps={10**30}: "),
    ],
)
def test_a_run_longer_than_its_step_counter_is_refused(overrides, why):
    # Before: 1e300 epochs became a step count no int32 state step can reach.
    from effnet_jax.train.loop import num_steps

    with pytest.raises(ValueError, match=re.escape(why) + r"[\d,]+ steps, more than the 2,147,483,647"):
        num_steps(tiny_config(**overrides), {"num_examples": 64})
    assert num_steps(tiny_config(num_epochs=2.0, num_train_steps=0), {"num_examples": 64}) == (8, 4)


def test_more_soup_seeds_than_a_run_may_hold_are_refused():
    from effnet_jax.train import soup

    config = tiny_config(soup_seeds=65)
    with pytest.raises(ValueError, match=r"config\.soup_seeds=65: expected an integer >= 1, at most 64"):
        soup.soup_seeds(config)
    assert soup.soup_seeds(tiny_config(soup_seeds=64)) == 64


@pytest.mark.parametrize("value", [0, -3, True, 2.5, "8"])
def test_a_batch_size_below_one_or_not_an_integer_is_refused_naming_the_key(value):
    with pytest.raises(ValueError, match=r"^--batch_size=.*: expected an integer >= 1$"):
        limits.padded_batch_size(value, 224, "--batch_size")


def test_a_batch_size_over_the_budget_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"config.eval_batch_size=1073741824.*over the decoded-size budget"):
        limits.padded_batch_size(2**30, 224, "config.eval_batch_size")
    assert limits.padded_batch_size(64, 224) == 64


def test_effnet_predict_with_a_petabyte_batch_is_one_line(workdir, tmp_path, capsys):
    # Before: numpy's _ArrayMemoryError traceback (10.9 PiB for --batch_size=10**12).
    from effnet_jax.inference.prediction import Predictor

    with pytest.raises(ValueError, match=r"batch_size=1000000000000: a batch of .* over the decoded-size budget"):
        Predictor(workdir, batch_size=10**12)
    with pytest.raises(ValueError, match=r"^batch_size=0: expected an integer >= 1$"):  # was taken as 1
        Predictor(workdir, batch_size=0)


def test_effnet_adapt_with_a_petabyte_batch_is_refused_before_reading_or_writing(workdir, tmp_path):
    from effnet_jax.inference.adaptation import AdaptError, adapt_run

    images = tmp_path / "site"
    images.mkdir()
    (images / "a.jpeg").write_bytes(fx.jpeg(1))
    with pytest.raises(AdaptError, match=r"^--batch_size=10000000000: a batch of"):
        adapt_run(workdir, str(images), str(tmp_path / "adapted"), batch_size=10**10)
    assert not (tmp_path / "adapted").exists()


def test_a_downloaded_runs_eval_batch_size_is_held_to_the_budget(base_run):
    # Before: effnet-eval padded every batch to config.eval_batch_size=10**12 (91 s, then a MemoryError).
    from effnet_jax.inference.evaluation import _batch_size

    run = runs.open(base_run, "latest")
    config = ml_collections.ConfigDict(run.config.to_dict())
    config.eval_batch_size = 10**12
    forged = dataclasses.replace(run, config=config)
    with pytest.raises(ValueError, match=r"^config.eval_batch_size=1000000000000: a batch of .* over the decoded-size"):
        _batch_size(forged, None)
    assert _batch_size(forged, 8) == 8  # --batch_size wins
    assert _batch_size(run, None) == run.config.eval_batch_size


# --- effnet-train refuses a bad value before any work ---------------------------------------------


ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))


def test_effnet_train_with_a_bad_image_size_is_one_line_before_any_work(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "effnet_jax.cli.train", "--config=configs/debug_synthetic.py"]
        + [f"--workdir={tmp_path / 'run'}", "--config.image_size=100000"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == errors.EXIT_USAGE
    assert proc.stderr.strip().splitlines()[-1] == (
        "effnet-train: config.image_size=100000: expected None (the variant's) or an integer from 32 to 1024"
    )
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_an_unknown_best_metric_is_refused_before_training_naming_the_metrics_evaluation_logs(tmp_path):
    # Before: accepted, then a KeyError in the checkpointer's best_fn at the first evaluation.
    from effnet_jax.metrics.logged import metric_names

    workdir = tmp_path / "run"
    done = run_module(
        "effnet_jax.cli.train",
        "--config=configs/debug_synthetic.py",
        f"--workdir={workdir}",
        "--config.num_train_steps=2",
        "--config.image_size=32",
        "--config.best_metric=nosuch",
    )
    assert done.returncode == 2, done.stderr[-2000:]
    names = metric_names(CLASS_NAMES)
    assert {"auc", "loss", "sensitivity_threshold"} <= set(names)
    assert done.stderr.strip().splitlines()[-1] == (
        "effnet-train: config.best_metric='nosuch': not a metric this task's evaluation logs; "
        f"expected one of {', '.join(names)}"
    )
    assert "step 1/" not in done.stderr and not workdir.exists()


def test_training_refuses_an_eval_batch_the_budget_cannot_hold_before_its_first_step(tmp_path):
    done = train_synthetic(tmp_path / "run", f"--config.eval_batch_size={2**30}")
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("effnet-train: config.eval_batch_size=1073741824: a batch of 1,073,741,824 images")
    assert "step 1/" not in done.stderr  # refused before training, not at the first evaluation
    assert not list((tmp_path / "run").glob("checkpoints/*"))


# --- command-line flags ---------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["evaluate", "predict", "adapt"])
def test_batch_size_zero_is_a_flag_error_not_one_image(module, tmp_path):
    extra = {"predict": ["x.png"], "adapt": [f"--images={tmp_path}", f"--out={tmp_path}/out"]}.get(module, [])
    done = run_module(f"effnet_jax.cli.{module}", f"--workdir={tmp_path}", "--batch_size=0", *extra)
    assert done.returncode != 0
    assert "--batch_size=0: 0 is not a positive integer" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "spec, why",
    [
        ("../x", r"unknown part '../x'"),
        ("crops@nan", r"crop_fraction nan is not in \(0, 1\]"),
        ("crops@1e309", r"crop_fraction inf is not in \(0, 1\]"),
        ("crops@-1", r"crop_fraction -1.0 is not in \(0, 1\]"),
        ("crops@" + "1" * 5000, r"crop_fraction inf is not in \(0, 1\]"),
        ("x" * 1_000_000, r"unknown part 'xxxxx.*xxxxx'"),
    ],
    ids=["dotdot", "nan", "1e309", "negative", "5000-digits", "a-megabyte"],
)
def test_a_bad_tta_spec_is_a_short_line_naming_the_flag(spec, why):
    # Before: 'TTA crop_fraction must be in (0, 1], got nan.' naming no flag; a spec of a MB echoed twice.
    from effnet_jax.inference.tta import parse_tta

    with pytest.raises(ValueError, match=f"^--tta='.*': {why}") as caught:
        parse_tta(spec)
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize("samples", ["-1", "0", "100000"])
def test_data_report_samples_out_of_range_is_refused_before_the_scan(tmp_path, capsys, samples):
    status = data_cli.main(["report", f"--data_dir={tmp_path}", f"--out={tmp_path / 'out'}", f"--samples={samples}"])
    assert status == 2
    assert (
        capsys.readouterr().err.strip() == f"effnet-data: --samples={samples}: expected 1 to 64 sample images per class"
    )
    assert not (tmp_path / "out").exists()


def _command(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"effnet_jax.cli.{module}", *args], capture_output=True, text=True, timeout=120
    )


def test_results_record_checkpoint_of_unicode_digits_is_one_line(tmp_path):
    done = _command(
        "results",
        "record",
        str(tmp_path),
        "--id=x",
        "--name=n",
        "--kept=k",
        "--run_command=c",
        "--run_config=c",
        "--checkpoint=\u00b2",
        f"--out={tmp_path / 'recipes.jsonl'}",
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.startswith("effnet-results: error:"), done.stderr


def _tree(root):
    return write_tree(root, GOOD_TREE)


@pytest.mark.parametrize("max_size", [7, 16385, 10**8])
def test_effnet_data_prepare_holds_max_size_to_the_config_keys_bounds(tmp_path, capsys, max_size):
    # --max_size=100000000 was taken (the config key data.max_size is 8 to 16384).
    status = data_cli.main(
        [
            "prepare",
            "--name=chest_xray",
            f"--manual_dir={_tree(tmp_path / 'data')}",
            f"--data_dir={tmp_path / 'tfds'}",
            f"--max_size={max_size}",
        ]
    )
    assert status == 2
    assert f"data.max_size={max_size}: expected an image side from 8 to 16384 pixels" in capsys.readouterr().err
    assert not (tmp_path / "tfds").exists()


# --- effnet-sweep's grids -------------------------------------------------------------------------


def test_sweep_errors_shorten_a_pasted_megabyte_flag():
    for spec in ["seed=" + "[" * 50_000 + "]" * 50_000, "seed=[" + "9" * 50_000 + "]", "x" * 50_000 + "=[1]"]:
        with pytest.raises(sweep.SweepError) as e:
            axis = sweep.parse_axis(spec)
            sweep._override(__import__("ml_collections").ConfigDict({"seed": 0}), axis.key, axis.values[0])
        assert len(str(e.value)) < 600 and "\n" not in str(e.value)


def test_sweep_value_that_does_not_fit_is_shown_shortened():
    import ml_collections

    axis = sweep.parse_axis("seed=[[" + ",".join(["1"] * 20_000) + "]]")
    with pytest.raises(sweep.SweepError, match=r"^--sweep seed: the value \[1, 1, .*\.\.\..*does not fit") as e:
        sweep._override(ml_collections.ConfigDict({"seed": 0}), axis.key, axis.values[0])
    assert len(str(e.value)) < 600


def test_sweep_values_are_never_evaluated(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(sweep.SweepError, match="not a Python literal"):
        sweep.parse_axis(f"seed=[__import__('os').system('touch {marker}')]")
    assert not marker.exists()


def test_a_sweep_grid_of_millions_of_points_is_refused_before_it_is_built(tmp_path):
    # Before: 2000 x 2000 values built 4,000,000 deep copies of the config (GBs, an hour) before training.
    from effnet_jax import sweep

    axes = [sweep.Axis("seed", tuple(range(2000))), sweep.Axis("optimizer.learning_rate", tuple(range(1, 2001)))]
    with pytest.raises(sweep.SweepError, match=r"2000 \(seed\) x 2000 \(optimizer.learning_rate\) = 4,000,000 points"):
        sweep.plan(tiny_config(), str(tmp_path / "sweep"), axes)
    assert len(sweep.plan(tiny_config(), str(tmp_path / "sweep"), [sweep.Axis("seed", (0, 1))])) == 2


# --- one line per known cause, with its exit status -----------------------------------------------


def test_a_bug_keeps_its_traceback():
    assert errors.one_line(ZeroDivisionError("x")) is None
    with pytest.raises(ZeroDivisionError):
        errors.exit_in_one_line("effnet-train", ZeroDivisionError("x"))


def test_many_bad_images_are_one_line_that_counts_the_rest():
    from effnet_jax.data.imaging import BadImageError

    status, message = errors.one_line(BadImageError("3 bad input file(s):\n  /d/a.jpeg: x\n  /d/b.jpeg: y\n  /d/c: z"))
    assert status == errors.EXIT_INPUT and "\n" not in message
    assert message.startswith("3 bad input file(s): /d/a.jpeg: x (+2 more")


def test_a_bad_config_value_is_one_line_with_the_usage_status():
    status, message = errors.one_line(ValueError("data.on_bad_image='maybe': expected one of ('error', 'skip')"))
    assert (status, message) == (errors.EXIT_USAGE, "data.on_bad_image='maybe': expected one of ('error', 'skip')")


# --- devices and batch sizes: refused before the data is prepared ------------------------------------

DEVICES = jax.device_count()  # the suite's forced host devices (tests/conftest.py), 8 or more


def _check(config) -> None:
    """What the trainer checks before it prepares the data: the config, then its devices and batches."""
    validate_config(config)
    require_batches_fit_devices(config, DEVICES, 1)


@pytest.mark.parametrize(
    "overrides, said",
    [
        (
            {"num_devices": DEVICES + 1},
            f"config.num_devices={DEVICES + 1}: expected 0 (all devices) or at most the {DEVICES} devices JAX finds",
        ),
        (
            {"num_devices": 3},
            "config.batch_size=16: expected a multiple of the 3 devices it is split over (config.num_devices=3)",
        ),
        (
            {"batch_size": DEVICES, "eval_batch_size": DEVICES + 1},
            f"config.eval_batch_size={DEVICES + 1}: expected a multiple of the {DEVICES} devices it is split over "
            "(all devices)",
        ),
        (
            {"eval_batch_size": 10**12},
            "config.eval_batch_size=1000000000000: a batch of 1,000,000,000,000 images of 32x32x3 float32 would "
            "take 12,288,000,000,000,000 bytes to decode, over the decoded-size budget of",
        ),
        (
            {"batch_size": 10**12},
            "config.batch_size=1000000000000: 1,000,000,000,000 images of 32x32x3 uint8 per host take "
            "3,072,000,000,000,000 bytes, more than this host's ",
        ),
        (
            {"optimizer.grad_accum_steps": 2**31},
            "config.optimizer.grad_accum_steps=2147483648: expected an integer from 1 to 2,147,483,647 "
            "(batches per update)",
        ),
        (
            {"keep_checkpoints": 5000},
            "config.keep_checkpoints=5000: expected an integer from 1 to 4,000 (a downloaded run's checkpoints "
            "folder may hold a few more)",
        ),
    ],
)
def test_a_device_or_batch_value_the_run_cannot_use_is_refused_naming_its_key(overrides, said):
    with pytest.raises(ValueError) as info:
        _check(tiny_config(**overrides))
    assert str(info.value).startswith(said) and "\n" not in str(info.value)


def test_the_device_and_batch_values_a_run_can_use_pass():
    for overrides in (
        {"num_devices": 0},
        {"num_devices": DEVICES, "batch_size": DEVICES, "eval_batch_size": 2 * DEVICES},
        {"num_devices": 1, "batch_size": 3, "eval_batch_size": 5},
        {"optimizer.grad_accum_steps": 2**31 - 1},
        {"keep_checkpoints": 4000},
    ):
        _check(tiny_config(**overrides))


def test_the_padded_evaluation_batch_is_held_to_the_budget_per_process(monkeypatch):
    # One 32 px float32 image takes 12,288 bytes: 128 of them are over a 1 MiB budget, 64 are not.
    monkeypatch.setenv(limits.ENV_VAR, "1M")
    config = tiny_config(eval_batch_size=128)
    require_batches_fit_devices(config, device_count=8, process_count=2)
    with pytest.raises(ValueError, match=r"^config\.eval_batch_size=128: a batch of 128 images of 32x32x3 float32"):
        require_batches_fit_devices(config, device_count=8, process_count=1)


def _train_sample(tmp_path, *args):
    """effnet-train on the bundled sample, its data set prepared (if ever) under tmp_path/tfds."""
    return run_module(
        "effnet_jax.cli.train",
        "--config=configs/debug.py",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.data_dir={tmp_path / 'tfds'}",
        *args,
    )


def test_effnet_train_refuses_too_many_devices_before_preparing_the_data(tmp_path):
    # Before: the sample was prepared into tfds/ and the run then refused the mesh.
    done = _train_sample(tmp_path, "--config.num_devices=1000")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1] == (
        f"effnet-train: config.num_devices=1000: expected 0 (all devices) or at most the {DEVICES} devices JAX finds"
    )
    assert not (tmp_path / "tfds").exists() and not (tmp_path / "run").exists()


def test_effnet_train_dry_run_refuses_an_evaluation_batch_over_the_budget(tmp_path):
    # Before: the dry run described the run, which failed once the data was prepared.
    done = _train_sample(tmp_path, "--config.eval_batch_size=1000000000000", "--dry_run")
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.splitlines()[-1]
    assert last.startswith("effnet-train: config.eval_batch_size=1000000000000: a batch of 1,000,000,000,000 images")
    assert "over the decoded-size budget" in last and "Config (resolved)" not in done.stdout
    assert not (tmp_path / "tfds").exists()


def test_a_multi_process_run_checks_its_devices_once_jax_distributed_started(tmp_path):
    # effnet-train validates its config before it starts jax.distributed (which a started backend
    # forbids): the devices are checked by the run once it has started, still before the data.
    done = _train_sample(
        tmp_path,
        "--config.num_devices=1000",
        f"--coordinator_address=127.0.0.1:{portpicker.pick_unused_port()}",
        "--num_processes=1",
        "--process_id=0",
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"jax.distributed: process 0 of 1, {DEVICES} local of {DEVICES} devices" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("effnet-train: config.num_devices=1000: expected 0 (all devices)")
    assert not (tmp_path / "tfds").exists()
