"""Hostile flag values on the command line, round 10: each refused in one line naming the flag, before any work."""

import subprocess
import sys

import pytest

from effnet_jax import sweep
from effnet_jax.cli import data as data_cli
from effnet_jax.server.app import Settings


def _command(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"effnet_jax.cli.{module}", *args], capture_output=True, text=True, timeout=120
    )


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


def test_serve_max_batch_above_max_queue_is_refused():
    with pytest.raises(ValueError, match=r"^max_batch=1000000000: expected at most max_queue=256"):
        Settings(max_batch=10**9)
    assert Settings(max_batch=256).max_batch == 256


@pytest.mark.parametrize("flag", ["--port=70000", "--port=0", "--port=-1", "--max_connections=0"])
def test_serve_port_and_connections_refused_before_the_model_loads(flag):
    done = _command("serve", "--exported=/nonexistent/effnet-model", flag)
    assert done.returncode == 1
    name = flag.split("=")[0]
    assert done.stderr.strip().splitlines()[-1].startswith(f"effnet-serve: error: {flag}: expected"), done.stderr
    assert "Traceback" not in done.stderr and name in done.stderr


@pytest.mark.parametrize("samples", ["-1", "0", "100000"])
def test_data_report_samples_out_of_range_is_refused_before_the_scan(tmp_path, capsys, samples):
    status = data_cli.main(["report", f"--data_dir={tmp_path}", f"--out={tmp_path / 'out'}", f"--samples={samples}"])
    assert status == 2
    assert (
        capsys.readouterr().err.strip() == f"effnet-data: --samples={samples}: expected 1 to 64 sample images per class"
    )
    assert not (tmp_path / "out").exists()


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
