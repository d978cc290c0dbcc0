#!/usr/bin/env bash
# GPU benchmark: effnet_jax (bf16, native depthwise) against timm (AMP bf16, channels_last),
# B0 and Lite0 at 224 px, batch 128 and 256: train-step and eval img/s, one process, alternating.
#
#   benchmarks/gpu.sh [--dry-run] [--variants=efficientnet_b0,tf_efficientnet_lite0] [--batch=128,256]
#                     [--finetune=CHEST_XRAY_DIR] [--workers=12] [--deadline=SECONDS] [--jsonl=FILE]
#
# --finetune also runs the shipped recipe's train step (configs/pneumonia.py: Lite0, 224 px,
# batch 32, every layer) fed by the real grain pipeline, against the same step on a resident
# batch (benchmarks/bench_finetune.py), to show whether the input pipeline keeps up.
# On an NVIDIA host it installs the CUDA build of jax when the installed one sees no GPU
# (pip install -U 'jax[cuda13]'), then runs benchmarks/gpu_bench.py. --dry-run needs no GPU:
# it prints the commands and runs the benchmark at 64 px, batch 2, one step, on whatever
# device is there, which checks the script end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
variants="efficientnet_b0,tf_efficientnet_lite0"; batch="128,256"; dry_run=0
finetune=""; workers=12; extra=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    --variants=*) variants="${arg#*=}" ;;
    --batch=*) batch="${arg#*=}" ;;
    --finetune=*) finetune="${arg#*=}" ;;
    --workers=*) workers="${arg#*=}" ;;
    --deadline=*) extra+=(--deadline "${arg#*=}") ;;
    --jsonl=*) extra+=(--jsonl "${arg#*=}") ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
has_gpu() { "$python" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; }
bench=("$python" benchmarks/gpu_bench.py --variants "$variants" --batch "$batch" "${extra[@]}")
fed=("$python" benchmarks/bench_finetune.py --config pneumonia.py --freeze_until '' --batch 32 --no_torch
     --cache_dir '' --manual_dir "$finetune" --workers "$workers")
if [[ $dry_run -eq 1 ]]; then
  has_gpu || echo "+ $python -m pip install -U 'jax[cuda13]'   # (not run: dry run)"
  echo "+ ${bench[*]}"
  "${bench[@]}" --tiny
  [[ -z "$finetune" ]] || echo "+ $(printf "%q " "${fed[@]}")  # (not run: dry run)"
  exit 0
fi
if ! has_gpu; then
  command -v nvidia-smi >/dev/null || { echo "gpu.sh: no NVIDIA GPU here (nvidia-smi missing); try --dry-run" >&2; exit 1; }
  "$python" -m pip install -q -U 'jax[cuda13]'
  has_gpu || { echo "gpu.sh: jax still sees no GPU after installing jax[cuda13]" >&2; exit 1; }
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"${bench[@]}"
[[ -z "$finetune" ]] || "${fed[@]}"
