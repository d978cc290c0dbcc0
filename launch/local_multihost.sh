#!/usr/bin/env bash
# Multi-host training on one machine: N processes x M fake CPU devices, wired with
# jax.distributed over 127.0.0.1 (gloo collectives). Debug multi-host code without a pod.
#
#   launch/local_multihost.sh [--processes=2] [--devices=4] [--port=PORT] [--logdir=DIR] \
#       -- --config=configs/debug.py --workdir=/tmp/effnet_mh [--config.key=value ...]
#
# Everything after `--` goes unchanged to effnet-train in every process; each process
# also gets --coordinator_address, --num_processes and --process_id. Process 0 prints to
# this terminal; process i writes LOGDIR/process_<i>.log (default: a fresh temp dir).
# If any process fails, the others are stopped and this script exits with its status.
set -euo pipefail

processes=2
devices=4
port=""
logdir=""
python="${PYTHON:-python}"

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --processes=*) processes="${1#*=}" ;;
    --devices=*) devices="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --logdir=*) logdir="${1#*=}" ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "local_multihost.sh: unknown option $1 (train flags go after --)" >&2; usage 2 ;;
  esac
  shift
done
train_args=("$@")

for name in processes devices; do
  if ! [[ "${!name}" =~ ^[1-9][0-9]*$ ]]; then
    echo "local_multihost.sh: --$name=${!name}: expected a positive integer" >&2; exit 2
  fi
done
if [[ -z "$port" ]]; then
  # A port nobody listens on now; the coordinator (process 0) binds it a moment later.
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
logdir="${logdir:-$(mktemp -d -t effnet_multihost.XXXXXX)}"
mkdir -p "$logdir"

# Each process sees only its own M CPU devices; together they form one N*M-device mesh.
export JAX_PLATFORMS=cpu
export JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
export XLA_FLAGS="--xla_force_host_platform_device_count=${devices}"

echo "local_multihost: ${processes} processes x ${devices} CPU devices, coordinator 127.0.0.1:${port}, logs in ${logdir}" >&2

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # jax.distributed catches SIGTERM (it treats it as a preemption notice) and keeps running.
  sleep 3
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}
trap 'stop_all; exit 143' TERM INT

for ((i = 0; i < processes; i++)); do
  cmd=("$python" -m effnet_jax.cli.train "${train_args[@]}" --coordinator_address="127.0.0.1:${port}"
       --num_processes="${processes}" --process_id="${i}")
  if [[ $i -eq 0 ]]; then
    # Process substitution, not a pipe, so $! is python's pid (a pipe would give tee's).
    "${cmd[@]}" > >(tee "${logdir}/process_0.log") 2>&1 &
  else
    "${cmd[@]}" >"${logdir}/process_${i}.log" 2>&1 &
  fi
  pids+=("$!")
done

# The first failure stops the rest: a lone survivor would wait at a collective forever.
# Poll rather than 'wait -n': when processes end together bash may have dropped them from
# its job table already ('wait -n' then says "no such job"), while 'wait PID' still returns
# the status bash saved when it reaped PID.
status=0
running=("${pids[@]}")
while [[ ${#running[@]} -gt 0 ]]; do
  left=()
  for pid in "${running[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then left+=("$pid"); continue; fi
    set +e
    wait "$pid"
    rc=$?
    set -e
    if [[ $rc -ne 0 && $status -eq 0 ]]; then
      status=$rc
      echo "local_multihost: a process exited with status $rc; stopping the others (logs in ${logdir})" >&2
      stop_all
    fi
  done
  running=("${left[@]+"${left[@]}"}")
  if [[ ${#running[@]} -gt 0 ]]; then sleep 1; fi
done
for ((i = 1; i < processes; i++)); do
  if [[ $status -ne 0 ]]; then
    echo "----- process_${i}.log (last 30 lines) -----" >&2
    tail -n 30 "${logdir}/process_${i}.log" >&2 || true
  fi
done
exit "$status"
