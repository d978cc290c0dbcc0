#!/usr/bin/env bash
# Train on one host with one or more NVIDIA GPUs (the CUDA build of jax). One process drives
# every visible GPU: jit splits the global batch over them (no jax.distributed needed).
#
#   launch/gpu.sh [--gpus=0,1,2,3] [--install] [--cuda=cuda12] [--dry-run] \
#       -- --config=configs/pneumonia_b0.py --workdir=/data/runs/b0 [--config.key=value ...]
#
# --gpus sets CUDA_VISIBLE_DEVICES (default: all GPUs). --install first installs
# jax[<cuda>] (the CUDA wheels bring their own CUDA/cuDNN) and this package (editable).
# config.batch_size must divide by the number of GPUs. Rerunning the same command
# resumes from the workdir's last checkpoint. --dry-run prints the commands only.
set -euo pipefail

gpus=""; install=0; cuda="cuda12"; dry_run=0
python="${PYTHON:-python3}"
usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpus=*) gpus="${1#*=}" ;;
    --install) install=1 ;;
    --cuda=*) cuda="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "gpu.sh: unknown option $1 (train flags go after --)" >&2; usage 2 ;;
  esac
  shift
done
[[ $# -gt 0 ]] || { echo "gpu.sh: give effnet-train's flags after --, e.g. -- --config=configs/pneumonia_b0.py --workdir=DIR" >&2; exit 2; }
repo_root="$(cd "$(dirname "$0")/.." && pwd)"

run() {
  if [[ $dry_run -eq 1 ]]; then echo "$*"; else echo "+ $*" >&2; "$@"; fi
}

if [[ $install -eq 1 ]]; then
  run "$python" -m pip install -U "jax[${cuda}]"
  run "$python" -m pip install -e "$repo_root"
fi
if [[ -n "$gpus" ]]; then
  export CUDA_VISIBLE_DEVICES="$gpus"
fi
# Fail loudly instead of silently training on the CPU when the CUDA build is missing.
export JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}"
if [[ $dry_run -eq 0 ]]; then
  "$python" -c 'import jax; d = jax.devices(); print(f"gpu.sh: {len(d)} x {d[0].device_kind}", flush=True)' >&2 \
    || { echo "gpu.sh: jax sees no CUDA GPU; install the CUDA build with --install (or pip install 'jax[${cuda}]')" >&2; exit 1; }
fi
cd "$repo_root"
run "$python" -m effnet_jax.cli.train "$@"
