"""What effnet-train shows while it runs: log lines apart from the bar, one compile notice,
img/s of training steps alone, a parameter summary, no TFDS size chatter."""

import io
import logging
import re
import sys

import data_fixtures as fx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

import effnet_jax
from effnet_jax.data import prepare
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


def render(text: str) -> list[str]:
    """The lines a terminal shows for ``text``: a carriage return moves back to the line's start."""
    lines, line, col = [], [], 0
    for ch in text:
        if ch == "\n":
            lines.append("".join(line).rstrip())
            line, col = [], 0
        elif ch == "\r":
            col = 0
        else:
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
    if line:
        lines.append("".join(line).rstrip())
    return lines


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(scope="module")
def terminal_run(tmp_path_factory):
    """Stderr of a 4-step run with its bar on a (fake) terminal and our logs on it, as effnet-train sets them."""
    from effnet_jax.train import train_and_evaluate

    terminal = FakeTerminal()
    ours = logging.getLogger("effnet_jax")
    handler = logging.StreamHandler(terminal)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    saved = sys.stderr, ours.level, ours.propagate
    sys.stderr = terminal  # the bar writes here, and tqdm's redirect recognises the handler as a console
    handler.stream = terminal
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    try:
        config = tiny_config(
            progress_bar=True, num_train_steps=4, log_every_steps=1, eval_every_steps=2, checkpoint_every_steps=2
        )
        train_and_evaluate(config, str(tmp_path_factory.mktemp("terminal")))
    finally:
        ours.removeHandler(handler)
        sys.stderr = saved[0]
        ours.setLevel(saved[1])
        ours.propagate = saved[2]
    return terminal.getvalue()


def test_no_log_line_shares_a_terminal_line_with_the_bar(terminal_run):
    lines = render(terminal_run)
    bars = [line for line in lines if "%|" in line]
    logs = [line for line in lines if re.search(r"\d\d:\d\d:\d\d effnet_jax", line)]
    assert bars and len(logs) >= 4
    assert not [line for line in bars if "effnet_jax" in line]
    assert all(re.match(r"\d\d:\d\d:\d\d effnet_jax", line) for line in logs)
    assert any("step 2 validation (synthetic)" in line for line in logs)


def test_the_compile_notice_comes_once_before_the_first_step(terminal_run):
    lines = render(terminal_run)
    notices = [i for i, line in enumerate(lines) if "compiling the train step" in line]
    assert len(notices) == 1
    assert not [line for line in lines[: notices[0]] if "%|" in line and " 1/4 " in line]


def test_the_run_states_its_parameters_per_stage(terminal_run):
    lines = render(terminal_run)
    assert any(re.match(r"parameters: [\d,]+ total, [\d,]+ trainable, 0 frozen$", line) for line in lines)
    assert any(re.match(r"  stage_6 +[\d,]+ trainable +0 frozen$", line) for line in lines)


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
