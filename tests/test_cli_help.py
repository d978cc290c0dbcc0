"""Every console script answers --help with exit 0 and lists its own flags with their meanings."""

import importlib
import json
import os
import re
import subprocess
import sys

import pytest
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A few flags each command must have, so that an empty define_flags cannot pass.
EXPECTED = {
    "effnet-train": {"config", "workdir", "distributed"},
    "effnet-eval": {"workdir", "split", "checkpoint", "tta"},
    "effnet-predict": {"workdir", "checkpoint", "threshold", "out", "gradcam", "exported"},
    "effnet-convert": {"variant", "input", "output", "num_classes"},
    "effnet-data": {"data_dir", "out", "manual_dir", "exclude_list"},
    "effnet-results": {"eval", "format", "id", "kept", "run_command", "out"},
    "effnet-export": {"workdir", "checkpoint", "out", "threshold", "platforms"},
    "effnet-soup": {"workdir", "members", "checkpoint", "combine"},
    "effnet-serve": {"exported", "host", "port", "max_batch", "max_wait_ms", "max_files"},
    "effnet-sweep": {"config", "workdir", "sweep"},
    "effnet-adapt": {"workdir", "checkpoint", "images", "out", "max_images", "batch_size", "mix"},
}


def console_scripts() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml: name -> 'module:function'."""
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        text = f.read()
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[)", text, re.M | re.S).group(1)
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.:]+)"', section, re.M))


def test_every_console_script_is_checked():
    assert set(console_scripts()) == set(EXPECTED)


# Each entry point is called as pip's generated wrapper calls it (argv[0] the script's path,
# then sys.exit(entry())); all six in one interpreter, as --help exits before defining flags.
_RUNNER = """
import importlib, io, json, sys, contextlib
results = {}
for name, target in json.loads(sys.argv[1]).items():
    module, function = target.split(":")
    sys.argv = ["/usr/local/bin/" + name, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            getattr(importlib.import_module(module), function)()
        code = None
    except SystemExit as e:
        code = e.code
    results[name] = [code, out.getvalue()]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def helps() -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, json.dumps(console_scripts())],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_help_lists_the_commands_own_flags(name, helps):
    code, text = helps[name]
    assert code == 0
    out = " ".join(text.split())
    own = flags.FlagValues()
    importlib.import_module(console_scripts()[name].split(":")[0]).define_flags(own)
    assert EXPECTED[name] <= set(own)
    for flag in own:
        assert re.search(rf"--(\[no\])?{flag}\b", out), f"{name} --help does not list --{flag}"
        assert " ".join(own[flag].help.split()) in out, f"{name} --help lacks the meaning of --{flag}"
    # Only its own: none of absl's or JAX's flags (those are --helpfull's).
    assert "--verbosity" not in out and "--jax_" not in out


@pytest.mark.parametrize(
    "name, args",
    [
        ("effnet-train", ["--help"]),  # a command with --config, its help
        ("effnet-results", ["tables"]),  # a command's own output, written inside absl's app.run
    ],
)
def test_a_reader_that_left_ends_the_command_quietly(name, args):
    # `effnet-results tables | head`: the read end is closed before the command writes a byte,
    # so every write meets EPIPE (Python ignores SIGPIPE), whatever the timing.
    module, function = console_scripts()[name].split(":")
    code = f"import sys; from {module} import {function}; sys.argv = {[name, *args]!r}; sys.exit({function}())"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr[-2000:]
    assert proc.stderr == ""
