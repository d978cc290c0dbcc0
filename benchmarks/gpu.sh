#!/usr/bin/env bash
# GPU benchmark: effnet_jax (bf16, native depthwise) against timm (AMP bf16, channels_last),
# B0 and Lite0 at 224 px, batch 128 and 256: train-step and eval img/s, one process, alternating.
#
#   benchmarks/gpu.sh [--dry-run] [--variants=efficientnet_b0,tf_efficientnet_lite0] [--batch=128,256]
#
# On an NVIDIA host it installs the CUDA build of jax when the installed one sees no GPU
# (pip install -U 'jax[cuda13]'), then runs benchmarks/gpu_bench.py. --dry-run needs no GPU:
# it prints the commands and runs the benchmark at 64 px, batch 2, one step, on whatever
# device is there, which checks the script end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
variants="efficientnet_b0,tf_efficientnet_lite0"; batch="128,256"; dry_run=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    --variants=*) variants="${arg#*=}" ;;
    --batch=*) batch="${arg#*=}" ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
has_gpu() { "$python" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; }
bench=("$python" benchmarks/gpu_bench.py --variants "$variants" --batch "$batch")
if [[ $dry_run -eq 1 ]]; then
  has_gpu || echo "+ $python -m pip install -U 'jax[cuda13]'   # (not run: dry run)"
  echo "+ ${bench[*]}"
  exec "${bench[@]}" --tiny
fi
if ! has_gpu; then
  command -v nvidia-smi >/dev/null || { echo "gpu.sh: no NVIDIA GPU here (nvidia-smi missing); try --dry-run" >&2; exit 1; }
  "$python" -m pip install -q -U 'jax[cuda13]'
  has_gpu || { echo "gpu.sh: jax still sees no GPU after installing jax[cuda13]" >&2; exit 1; }
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"${bench[@]}"
