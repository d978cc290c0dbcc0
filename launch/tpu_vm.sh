#!/usr/bin/env bash
# Train on a Cloud TPU VM (one host or a pod slice): create it, install, run effnet-train on
# every worker with identical arguments, and recreate + resume when a spot VM is preempted.
#
#   launch/tpu_vm.sh --name=effnet-b4 --zone=us-central2-b --accelerator-type=v4-32 \
#       --workdir=gs://BUCKET/runs/b4 [--data-dir=gs://BUCKET/tfds] [--config=configs/tpu_b4.py] \
#       [--project=P] [--version=tpu-ubuntu2204-base] [--spot | --preemptible] [--queued] \
#       [--max-restarts=20] [--delete-at-end] [--dry-run] [-- --config.key=value ...]
#
# --queued asks for the slice through a queued resource (waits for capacity) instead of
# creating the VM directly. --spot / --preemptible: cheaper capacity that can be taken
# back; the loop below then recreates the VM and the trainer resumes from the last
# checkpoint in --workdir (which must therefore be gs://, not the VM's disk).
# --dry-run prints every gcloud command instead of running it (gcloud need not be installed).
# Flags after `--` go unchanged to effnet-train on every worker.
set -euo pipefail

name=""; zone=""; accelerator=""; project=""
version="tpu-ubuntu2204-base"
config="configs/tpu_b4.py"
workdir=""; data_dir=""
capacity=""        # "", spot or preemptible
queued=0; dry_run=0; delete_at_end=0
max_restarts=20
poll_s=60
jax_spec="jax[tpu]"
remote_dir="effnet_jax"   # on each worker, under $HOME

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "tpu_vm.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --accelerator-type=*) accelerator="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --data-dir=*) data_dir="${1#*=}" ;;
    --spot) capacity="spot" ;;
    --preemptible) capacity="preemptible" ;;
    --queued) queued=1 ;;
    --max-restarts=*) max_restarts="${1#*=}" ;;
    --poll-seconds=*) poll_s="${1#*=}" ;;
    --jax=*) jax_spec="${1#*=}" ;;
    --delete-at-end) delete_at_end=1 ;;
    --dry-run) dry_run=1 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (train flags go after --; see --help)" ;;
  esac
  shift
done
train_extra=("$@")

[[ -n "$name" ]] || die "--name is required (the TPU VM's name)"
[[ -n "$zone" ]] || die "--zone is required (e.g. us-central2-b)"
[[ -n "$accelerator" ]] || die "--accelerator-type is required (e.g. v4-8, v5litepod-16)"
[[ -n "$workdir" ]] || die "--workdir is required (gs://BUCKET/...: every worker and every restart must see it)"
[[ "$max_restarts" =~ ^[0-9]+$ ]] || die "--max-restarts=$max_restarts: expected a non-negative integer"
if [[ "$workdir" != gs://* ]]; then
  echo "tpu_vm.sh: warning: --workdir=$workdir is not gs://; it lives on each worker's disk and is lost with the VM" >&2
fi
if [[ $queued -eq 1 && "$capacity" == "preemptible" ]]; then
  die "--queued takes --spot, not --preemptible (queued resources have no preemptible mode)"
fi

common=(--zone="$zone")
[[ -n "$project" ]] && common+=(--project="$project")
queued_name="${name}-qr"

# -- running gcloud (or printing it) ------------------------------------------------------------
quote() {
  # POSIX shell quoting that stays readable: bare when safe, else '...' (as Python's shlex.quote).
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\"\'\"\'}"
  fi
}

gcloud_run() {
  # Prints the command on one line, shell-quoted, so it can be pasted (and parsed by tests).
  if [[ $dry_run -eq 1 ]]; then
    local out="gcloud" arg
    for arg in "$@"; do out+=" $(quote "$arg")"; done
    echo "$out"
    return 0
  fi
  echo "+ gcloud $*" >&2
  gcloud "$@"
}

# The VM's state: READY, CREATING, PREEMPTED, ..., or NOT_FOUND. A dry run pretends it is
# missing at first (so the create commands are printed) and READY after.
vm_state() {
  if [[ $dry_run -eq 1 ]]; then
    [[ ${dry_created:-0} -eq 1 ]] && echo READY || echo NOT_FOUND
    return
  fi
  gcloud compute tpus tpu-vm describe "$name" "${common[@]}" --format='value(state)' 2>/dev/null || echo NOT_FOUND
}

create_vm() {
  if [[ $queued -eq 1 ]]; then
    local flags=(--node-id="$name" --accelerator-type="$accelerator" --runtime-version="$version")
    [[ "$capacity" == "spot" ]] && flags+=(--spot)
    gcloud_run compute tpus queued-resources create "$queued_name" "${common[@]}" "${flags[@]}"
    # The queued resource turns ACTIVE once the slice exists; until then it waits for capacity.
    if [[ $dry_run -eq 0 ]]; then
      local state=""
      until [[ "$state" == "ACTIVE" ]]; do
        state="$(gcloud compute tpus queued-resources describe "$queued_name" "${common[@]}" \
          --format='value(state.state)' 2>/dev/null || echo UNKNOWN)"
        case "$state" in
          FAILED|SUSPENDED) die "queued resource $queued_name is $state" ;;
        esac
        echo "tpu_vm.sh: queued resource $queued_name: $state" >&2
        [[ "$state" == "ACTIVE" ]] || sleep "$poll_s"
      done
    fi
  else
    local flags=(--accelerator-type="$accelerator" --version="$version")
    [[ -n "$capacity" ]] && flags+=(--"$capacity")
    gcloud_run compute tpus tpu-vm create "$name" "${common[@]}" "${flags[@]}"
  fi
  dry_created=1
}

delete_vm() {
  if [[ $queued -eq 1 ]]; then
    gcloud_run compute tpus queued-resources delete "$queued_name" "${common[@]}" --force --quiet
  else
    gcloud_run compute tpus tpu-vm delete "$name" "${common[@]}" --quiet
  fi
}

# -- install: the same code on every worker -----------------------------------------------------
repo_root="$(cd "$(dirname "$0")/.." && pwd)"
tarball="${TMPDIR:-/tmp}/effnet_jax_src.tar.gz"

install_all() {
  if [[ $dry_run -eq 0 ]]; then
    # Committed code only: what runs on the pod is a commit you can name.
    git -C "$repo_root" archive --format=tar.gz -o "$tarball" HEAD
  fi
  gcloud_run compute tpus tpu-vm scp "$tarball" "${name}:effnet_jax_src.tar.gz" "${common[@]}" --worker=all
  gcloud_run compute tpus tpu-vm ssh "$name" "${common[@]}" --worker=all --command="$(install_command)"
}

install_command() {
  # The TPU build of jax (libtpu) first, then this package on top of it; gcsfs lets etils
  # epath read and write gs:// (orbax's tensorstore does gs:// natively).
  echo "set -e; rm -rf ~/${remote_dir} && mkdir -p ~/${remote_dir} && tar -xzf ~/effnet_jax_src.tar.gz -C ~/${remote_dir}" \
       "&& python3 -m pip install -q -U pip && python3 -m pip install -q -U '${jax_spec}'" \
       "-f https://storage.googleapis.com/jax-releases/libtpu_releases.html" \
       "&& python3 -m pip install -q gcsfs -e ~/${remote_dir}"
}

# -- train: identical arguments on every worker -------------------------------------------------
train_command() {
  # No per-worker flags: --distributed=on makes every process ask the TPU runtime who it is.
  local args=(--config="$config" --workdir="$workdir" --distributed=on --config.progress_bar=False)
  [[ -n "$data_dir" ]] && args+=(--config.data.data_dir="$data_dir")
  args+=("${train_extra[@]}")
  printf 'cd ~/%s && python3 -m effnet_jax.cli.train' "$remote_dir"
  local arg
  for arg in "${args[@]}"; do printf ' %s' "$(quote "$arg")"; done
}

run_training() {
  gcloud_run compute tpus tpu-vm ssh "$name" "${common[@]}" --worker=all --command="$(train_command)"
}

# -- the preemption loop ------------------------------------------------------------------------
attempt=0
while true; do
  state="$(vm_state)"
  case "$state" in
    READY) ;;
    NOT_FOUND) create_vm; install_all ;;
    # A preempted spot VM never comes back by itself: delete it and ask again.
    PREEMPTED|TERMINATED|STOPPED)
      echo "tpu_vm.sh: $name is $state; recreating it" >&2
      delete_vm; create_vm; install_all ;;
    *)
      echo "tpu_vm.sh: $name is $state; waiting ${poll_s}s" >&2
      sleep "$poll_s"; continue ;;
  esac
  if [[ $attempt -eq 0 && "$state" == "READY" ]]; then
    install_all  # an existing VM gets the current code too
  fi
  set +e
  run_training
  rc=$?
  set -e
  if [[ $rc -eq 0 ]]; then
    if [[ $dry_run -eq 1 ]]; then
      echo "tpu_vm.sh: dry run: the commands above were printed, none was run" >&2
    else
      echo "tpu_vm.sh: training finished; checkpoints and metrics in $workdir" >&2
    fi
    break
  fi
  after="$(vm_state)"
  if [[ "$after" == "READY" && -n "$capacity" && $dry_run -eq 0 ]]; then
    # A spot VM being reclaimed can drop the ssh session a little before its state changes.
    sleep "$poll_s"
    after="$(vm_state)"
  fi
  if [[ "$after" == "READY" ]]; then
    # The VM is fine, so the trainer itself failed: restarting would fail the same way.
    die "effnet-train exited with status $rc on a READY VM; not restarting (see the log above)"
  fi
  attempt=$((attempt + 1))
  if [[ $attempt -gt $max_restarts ]]; then
    die "$name was lost $attempt times (now $after); giving up after --max-restarts=$max_restarts"
  fi
  echo "tpu_vm.sh: $name is $after after exit status $rc (preempted?); restart $attempt of $max_restarts resumes from $workdir" >&2
done

if [[ $delete_at_end -eq 1 ]]; then
  delete_vm
fi
