"""Pieces of what effnet-train shows: img/s of training steps alone, progress lines off a terminal,
parameter counts per stage, no TFDS size chatter (a whole run on a terminal: tests/test_first_run.py)."""

import io
import logging

import data_fixtures as fx
import jax
import jax.numpy as jnp
import numpy as np
from helpers import run_module

import effnet_jax
from effnet_jax.data import prepare
from effnet_jax.progress import Progress
from effnet_jax.train import freeze, param_summary
from effnet_jax.train.progress import Throughput, TrainProgress


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_throughput_counts_only_the_steps_and_time_after_a_restart():
    clock = FakeClock()
    meter = Throughput(batch_size=16, clock=clock)
    meter.step()
    clock.now += 50.0  # the first step compiles...
    meter.restart()  # ...and the loop restarts the meter after it
    for _ in range(4):
        clock.now += 0.5
        meter.step()
    assert meter.reading() == (4 * 16 / 2.0, 0.5)
    clock.now += 1.0
    meter.step()
    clock.now += 30.0  # evaluation and a checkpoint...
    meter.restart()  # ...left out too
    clock.now += 2.0
    meter.step()
    meter.step()
    assert meter.reading() == (2 * 16 / 2.0, 1.0)


class QueuedStep:
    """A step's output that JAX dispatched but has not run: waiting for it takes ``seconds``."""

    def __init__(self, clock, seconds):
        self.clock, self.seconds = clock, seconds

    def block_until_ready(self):
        self.clock.now += self.seconds
        self.seconds = 0.0
        return self


def test_throughput_waits_for_the_steps_it_counts():
    clock = FakeClock()
    meter = Throughput(batch_size=16, clock=clock)
    meter.restart()
    outputs = []
    for _ in range(4):  # dispatched at once; the device runs them after
        meter.step()
        outputs.append(QueuedStep(clock, 0.75))
    assert meter.reading(outputs) == (4 * 16 / 3.0, 0.75)


def test_throughput_without_timed_steps_reads_none():
    clock = FakeClock()
    meter = Throughput(batch_size=8, clock=clock)
    clock.now += 5.0
    assert meter.reading() is None


def test_off_a_terminal_progress_is_whole_log_lines_and_no_bar(caplog):
    stream = io.StringIO()
    progress = TrainProgress(total=10, initial=0, desc="train [sample]", stream=stream)
    assert not progress.interactive
    for _ in range(3):
        progress.advance()
    with caplog.at_level(logging.INFO, logger="effnet_jax.train"):
        progress.report(0.5, (16.0, 1.0))
        progress.report(0.25, None)
    progress.close()
    assert stream.getvalue() == ""
    assert caplog.messages == [
        "train [sample]: step 3/10 (30%), loss 0.5000, 16.0 img/s, ETA 0:07",
        "train [sample]: step 3/10 (30%), loss 0.2500",
    ]


def _shapes(**modules):
    return {m: {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in leaves.items()} for m, leaves in modules.items()}


def test_parameter_counts_per_stage_are_exact_for_a_known_freeze_pattern():
    params = _shapes(
        conv_stem={"kernel": (3, 3, 3, 8)},  # 216
        bn1={"scale": (8,), "bias": (8,)},  # 16
        blocks_0_0={"conv_dw": (3, 3, 1, 8)},  # 72
        blocks_1_0={"conv_pw": (1, 1, 8, 16)},  # 128
        blocks_1_1={"conv_pw": (1, 1, 16, 16)},  # 256
        conv_head={"kernel": (1, 1, 16, 32)},  # 512
        bn2={"scale": (32,), "bias": (32,)},  # 64
        classifier={"kernel": (32, 2), "bias": (2,)},  # 66
    )
    mask = freeze.frozen_mask(params, [("config.freeze_until", freeze.until_pattern("blocks_1_1", params))])
    counts = param_summary.count_parameters(params, mask)
    assert [(c.name, c.total, c.trainable, c.frozen) for c in counts] == [
        ("stem", 232, 0, 232),
        ("stage_0", 72, 0, 72),
        ("stage_1", 384, 256, 128),
        ("head", 576, 576, 0),
        ("classifier", 66, 66, 0),
        ("total", 1330, 898, 432),
    ]
    assert param_summary.describe(counts).splitlines()[0] == "parameters: 1,330 total, 898 trainable, 432 frozen"


def test_lite0_with_its_first_three_stages_frozen_counts_every_parameter():
    model = effnet_jax.build_model("efficientnet_lite0", num_classes=2)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))["params"]
    mask = freeze.frozen_mask(params, [("config.freeze_until", freeze.until_pattern("blocks_3", params))])
    counts = {c.name: c for c in param_summary.count_parameters(params, mask)}
    assert counts["total"].total == 3_373_570 == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    assert counts["total"].frozen == 928 + 896 + 13_968 + 39_712
    assert [counts[f"stage_{s}"].frozen for s in range(7)] == [896, 13_968, 39_712, 0, 0, 0, 0]


def test_preparing_a_local_folder_prints_no_unknown_size_chatter(tmp_path, capsys, caplog):
    raw = fx.write_tree(tmp_path / "chest_xray", fx.GOOD_TREE)
    factory = prepare.BuilderFactory(name="chest_xray", data_dir=str(tmp_path / "tfds"), manual_dir=str(raw))
    with caplog.at_level(logging.INFO, logger="effnet_jax.data"):
        prepare.ensure_prepared(factory)
    out = capsys.readouterr().out
    assert "Unknown size" not in out and "Downloading and preparing" not in out
    assert any(m.startswith("preparing chest_xray (max512) once into ") for m in caplog.messages)


def test_progress_off_a_terminal_logs_a_line_per_tenth_and_a_closing_line(caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="effnet_jax"):
        with Progress(20, "eval test", unit="img", stream=stream) as bar:
            assert not bar.interactive
            for _ in range(10):
                bar.update(2)
    assert stream.getvalue() == ""
    assert caplog.messages == [f"eval test: {n}/20 img ({5 * n}%)" for n in range(2, 20, 2)] + [
        "eval test: 20/20 img (100%)"
    ]


def test_progress_on_a_terminal_of_zero_columns_still_draws_a_bar():
    import fcntl
    import os
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    with os.fdopen(follower, "w") as terminal:
        bar = Progress(10, "train [sample]", unit="step", stream=terminal)
        assert bar.interactive
        bar.update(3)
        bar.close()
    shown = os.read(leader, 4096).decode()
    os.close(leader)
    assert "train [sample]" in shown and "3/10" in shown


def test_data_prepare_in_a_pipe_writes_whole_lines_without_control_codes(tmp_path):
    raw = fx.write_tree(tmp_path / "chest_xray", fx.GOOD_TREE)
    proc = run_module("effnet_jax.cli.data", "prepare", f"--manual_dir={raw}", f"--data_dir={tmp_path}/tfds")
    assert proc.returncode == 0, proc.stderr[-2000:]
    everything = proc.stdout + proc.stderr
    assert "\r" not in everything and "\x1b" not in everything
    assert "effnet_jax.data: prepare chest_xray train: 11/11 img (100%)" in proc.stderr
    assert "Variant folder" not in everything


def test_library_noise_is_dropped_and_other_library_warnings_kept():
    from effnet_jax.progress import drop_library_noise, quiet_library_noise

    def record(msg, *args):
        return logging.LogRecord("absl", logging.WARNING, "x.py", 1, msg, args, None)

    quiet_library_noise()
    quiet_library_noise()  # once, however often it is called
    assert logging.getLogger("absl").filters.count(drop_library_noise) == 1
    assert not drop_library_noise(record("Given directory is read only=%s", "/runs/a/checkpoints"))
    assert not drop_library_noise(record("CheckpointManagerOptions.read_only=True, setting save_interval_steps=0."))
    assert not drop_library_noise(record("Variant folder %s has no %s", "/tfds/chest_xray/max512/1.0.0", "x.json"))
    assert drop_library_noise(record("Some other warning %s", "that matters"))
