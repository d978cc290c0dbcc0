"""launch/: the TPU VM script's dry run, the GPU script's dry run, and how effnet-train
decides whether a run is multi-process (effnet_jax.train.distributed.resolve)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

from effnet_jax.train import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name, *args, env=None):
    proc = subprocess.run(
        ["bash", os.path.join("launch", name), *args], cwd=REPO, capture_output=True, text=True, timeout=60, env=env
    )
    return proc


def _tpu_dry_run(*extra):
    args = [
        "--name=effnet-b4",
        "--zone=us-central2-b",
        "--accelerator-type=v4-32",
        "--project=my-proj",
        "--workdir=gs://bucket/runs/b4",
        "--data-dir=gs://bucket/tfds",
        "--dry-run",
        *extra,
    ]
    # An empty PATH entry for gcloud: the dry run must not need it.
    env = dict(os.environ, PATH="/usr/bin:/bin")
    proc = _script("tpu_vm.sh", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines()], proc


def _flag(argv, name):
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def test_tpu_dry_run_prints_only_gcloud_commands_with_the_given_zone_and_project():
    commands, proc = _tpu_dry_run("--spot", "--", "--config.num_epochs=3")
    assert commands and all(c[0] == "gcloud" and c[1:3] == ["compute", "tpus"] for c in commands)
    assert all(_flag(c, "zone") == "us-central2-b" and _flag(c, "project") == "my-proj" for c in commands)
    assert "none was run" in proc.stderr


def test_tpu_dry_run_creates_the_named_spot_vm_with_the_accelerator_type():
    commands, _ = _tpu_dry_run("--spot")
    (create,) = [c for c in commands if c[3:5] == ["tpu-vm", "create"]]
    assert create[5] == "effnet-b4"
    assert _flag(create, "accelerator-type") == "v4-32" and "--spot" in create


def test_tpu_dry_run_queued_resource_names_the_node():
    commands, _ = _tpu_dry_run("--queued", "--spot")
    (create,) = [c for c in commands if c[3:5] == ["queued-resources", "create"]]
    assert create[5] == "effnet-b4-qr" and _flag(create, "node-id") == "effnet-b4"
    assert _flag(create, "accelerator-type") == "v4-32" and "--spot" in create
    assert not [c for c in commands if c[3:5] == ["tpu-vm", "create"]]


def test_tpu_dry_run_installs_and_trains_on_all_workers_with_identical_arguments():
    commands, _ = _tpu_dry_run("--", "--config.num_epochs=3", "--config.model.name=tf_efficientnet_b4")
    remote = [c for c in commands if c[3:5] in (["tpu-vm", "ssh"], ["tpu-vm", "scp"])]
    # One command per step, sent to every worker at once: no worker can get different arguments.
    assert remote and all(_flag(c, "worker") == "all" for c in remote)
    assert all(c[5] == "effnet-b4" for c in remote if c[4] == "ssh")
    assert all(c[6].startswith("effnet-b4:") for c in remote if c[4] == "scp")
    ssh = [shlex.split(_flag(c, "command")) for c in remote if c[4] == "ssh"]
    assert any("jax[tpu]" in cmd for cmd in ssh)  # the TPU build of jax on every worker
    (train,) = [cmd for cmd in ssh if "effnet_jax.cli.train" in cmd]
    args = train[train.index("effnet_jax.cli.train") + 1 :]
    assert args == [
        "--config=configs/tpu_b4.py",
        "--workdir=gs://bucket/runs/b4",
        "--distributed=on",
        "--config.progress_bar=False",
        "--config.data.data_dir=gs://bucket/tfds",
        "--config.num_epochs=3",
        "--config.model.name=tf_efficientnet_b4",
    ]
    assert not any(a.startswith(("--process_id", "--coordinator_address")) for a in args)


def test_tpu_script_names_the_missing_flag():
    proc = _script("tpu_vm.sh", "--name=x", "--accelerator-type=v4-8", "--workdir=gs://b/r", "--dry-run")
    assert proc.returncode == 2 and "--zone is required" in proc.stderr


def test_gpu_dry_run_installs_the_cuda_build_and_trains():
    proc = _script("gpu.sh", "--install", "--dry-run", "--", "--config=configs/pneumonia_b0.py", "--workdir=/tmp/b0")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "jax[cuda12]" in lines[0]
    assert lines[-1].endswith("-m effnet_jax.cli.train --config=configs/pneumonia_b0.py --workdir=/tmp/b0")


def test_local_multihost_fails_when_its_processes_fail():
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(
        [
            "bash",
            "launch/local_multihost.sh",
            "--processes=2",
            "--devices=1",
            "--",
            "--config=configs/debug.py",
            "--workdir=/tmp/unused",
            "--config.no_such_key=1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert "unknown config key" in proc.stdout + proc.stderr


def test_ablation_script_runs_each_recipe_from_the_lite0_config_and_skips_finished_runs(tmp_path):
    finished = tmp_path / "no_aug"
    finished.mkdir()
    (finished / "metrics.jsonl").write_text('{"step": 441, "split": "run", "wall_seconds": 1.0}\n')
    proc = _script(
        "ablate_pneumonia.sh", f"--root={tmp_path}", "--image_size=96", "--only=base,strong_aug,no_aug", "--dry-run"
    )
    assert proc.returncode == 0, proc.stderr
    commands = [shlex.split(line[2:]) for line in proc.stderr.splitlines() if line.startswith("+ ")]
    assert [c[c.index("-m") + 1] for c in commands] == ["effnet_jax.cli.train"] * 2
    assert [c[3:6] for c in commands] == [
        ["--config=configs/pneumonia_lite0.py", f"--workdir={tmp_path}/base", "--config.image_size=96"],
        ["--config=configs/pneumonia_lite0.py", f"--workdir={tmp_path}/strong_aug", "--config.image_size=96"],
    ]
    assert "--config.data.augment.rotation=15" in commands[1]
    assert f"{tmp_path}/no_aug has finished; skipping" in proc.stderr
    bad = _script("ablate_pneumonia.sh", "--only=no_such_recipe", "--dry-run")
    assert bad.returncode == 2 and "names no ablation" in bad.stderr


# -- effnet_jax.train.distributed.resolve ----------------------------------------------------------


def test_single_process_unless_a_coordinator_is_named():
    assert distributed.resolve("auto", env={}) is None
    assert distributed.resolve("off", "10.0.0.1:1234", 2, 0, env={}) is None


def test_flags_win_over_environment():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.9:9", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert distributed.resolve("auto", env=env) == distributed.Settings("10.0.0.9:9", 4, 3)
    assert distributed.resolve("auto", "127.0.0.1:5", 2, 1, env=env) == distributed.Settings("127.0.0.1:5", 2, 1)


def test_on_leaves_detection_to_jax():
    assert distributed.resolve("on", env={}) == distributed.Settings(None, None, None)


@pytest.mark.parametrize(
    "args, env, message",
    [
        (("auto", "127.0.0.1:5", None, 0), {}, "--num_processes"),
        (("auto", "127.0.0.1:5", 2, 2), {}, "--process_id=2"),
        (("auto", "127.0.0.1", 2, 0), {}, "host:port"),
        (("auto", None, 2, 0), {}, "JAX_COORDINATOR_ADDRESS"),
        (
            ("auto", None, None, None),
            {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
            "JAX_NUM_PROCESSES='two'",
        ),
        (("sometimes",), {}, "--distributed='sometimes'"),
    ],
)
def test_errors_name_the_flag_or_variable(args, env, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        distributed.resolve(*args, env=env)


# -- tpu_vm.sh's preemption loop, against a fake gcloud ---------------------------------------------

FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Records each call; keeps the VM's state in $FAKE/state; training runs per $FAKE/train_results.
echo "$*" >> "$FAKE/calls"
case "$*" in
  *"tpu-vm describe"*) state="$(cat "$FAKE/state")"; [[ "$state" == NOT_FOUND ]] && exit 1; echo "$state" ;;
  *"tpu-vm create"*) echo READY > "$FAKE/state" ;;
  *"tpu-vm delete"*) echo NOT_FOUND > "$FAKE/state" ;;
  *"effnet_jax.cli.train"*)
    n=$(( $(cat "$FAKE/trains" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$FAKE/trains"
    result="$(sed -n "${n}p" "$FAKE/train_results")"
    case "$result" in
      preempted) echo PREEMPTED > "$FAKE/state"; exit 255 ;;
      crash) exit 1 ;;
    esac ;;
esac
exit 0
"""


def _fake_tpu_run(tmp_path, train_results):
    fake = tmp_path / "fake"
    (fake / "bin").mkdir(parents=True)
    gcloud = fake / "bin" / "gcloud"
    gcloud.write_text(FAKE_GCLOUD)
    gcloud.chmod(0o755)
    (fake / "state").write_text("NOT_FOUND\n")
    (fake / "train_results").write_text("\n".join(train_results) + "\n")
    env = dict(os.environ, FAKE=str(fake), PATH=f"{fake / 'bin'}:{os.environ['PATH']}", TMPDIR=str(tmp_path))
    proc = _script(
        "tpu_vm.sh",
        "--name=vm",
        "--zone=z",
        "--accelerator-type=v4-16",
        "--workdir=gs://b/r",
        "--spot",
        "--poll-seconds=0",
        env=env,
    )
    calls = [" ".join(c.split()[2:4]) for c in (fake / "calls").read_text().splitlines()]
    return proc, calls


def test_a_preempted_spot_vm_is_recreated_reinstalled_and_training_resumes(tmp_path):
    proc, calls = _fake_tpu_run(tmp_path, ["preempted", "ok"])
    assert proc.returncode == 0, proc.stderr
    setup = ["tpu-vm create", "tpu-vm scp", "tpu-vm ssh"]  # create, copy the code, install
    assert calls == (
        [
            "tpu-vm describe",
            *setup,
            "tpu-vm ssh",  # train: preempted
            "tpu-vm describe",
            "tpu-vm describe",
            "tpu-vm delete",
            *setup,
            "tpu-vm ssh",
        ]
    )  # resumed
    assert "restart 1 of 20 resumes from gs://b/r" in proc.stderr


def test_a_trainer_failure_on_a_ready_vm_is_not_retried(tmp_path):
    proc, calls = _fake_tpu_run(tmp_path, ["crash", "ok"])
    assert proc.returncode == 2
    assert "not restarting" in proc.stderr
    assert calls.count("tpu-vm create") == 1 and "tpu-vm delete" not in calls


def test_distributed_on_outside_a_cluster_says_which_flags_to_give():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "effnet_jax.cli.train",
            "--config=configs/debug.py",
            "--workdir=/tmp/unused",
            "--distributed=on",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "give --coordinator_address, --num_processes and --process_id" in proc.stderr
