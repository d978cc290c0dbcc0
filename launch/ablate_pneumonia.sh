#!/usr/bin/env bash
# The ablation study behind the earlier recipes (docs/experiments/README.md): one run per recipe change, each from
# configs/pneumonia_lite0.py plus overrides, one after another, then a table of them all.
#
#   launch/ablate_pneumonia.sh [--root=/tmp/ablate] [--image_size=128] [--only=NAME[,NAME]] [--dry-run]
#
# Every run is `effnet-train --config=configs/pneumonia_lite0.py --workdir=ROOT/NAME
# --config.image_size=SIZE BASE OVERRIDES...`; rerunning skips finished runs (their
# metrics.jsonl has a "run" record) and resumes interrupted ones from their last
# checkpoint. The table is `effnet-results ROOT/NAME ...`.
# At 128 px each run takes about 5 minutes on a 2-core CPU.
set -euo pipefail

root="/tmp/ablate"; image_size=128; only=""; dry_run=0
python="${PYTHON:-python3}"
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --root=*) root="${1#*=}" ;;
    --image_size=*) image_size="${1#*=}" ;;
    --only=*) only="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    -h|--help) usage 0 ;;
    *) echo "ablate_pneumonia.sh: unknown option $1" >&2; usage 2 ;;
  esac
  shift
done

# The study's starting recipe, pinned so that later changes to configs/pneumonia_lite0.py
# (which took the winners: freezing to blocks_5, light augmentation) do not move it.
base_overrides="--config.freeze_until=blocks_3 --config.data.augment.rotation=10 --config.data.augment.scale_min=0.7
  --config.data.augment.translate=0.05 --config.data.augment.brightness=0.1 --config.data.augment.contrast=0.1"

# name | overrides on top of the base (later flags win over earlier ones).
ablations=(
  "base|"
  "class_weights|--config.data.balance=none --config.class_weights=balanced"
  "no_balance|--config.data.balance=none"
  "freeze_none|--config.freeze_until="
  "freeze_to_blocks_5|--config.freeze_until=blocks_5"
  "no_ema|--config.ema_decay=0"
  "no_label_smoothing|--config.label_smoothing=0"
  "no_ema_no_ls|--config.ema_decay=0 --config.label_smoothing=0"
  "light_aug|--config.data.augment.rotation=5 --config.data.augment.scale_min=0.9 --config.data.augment.translate=0.02 --config.data.augment.brightness=0.05 --config.data.augment.contrast=0.05"
  "strong_aug|--config.data.augment.rotation=15 --config.data.augment.scale_min=0.6 --config.data.augment.translate=0.1 --config.data.augment.brightness=0.2 --config.data.augment.contrast=0.2"
  "no_aug|--config.data.augment.enabled=false"
  "lite1|--config.model.name=tf_efficientnet_lite1 --config.model.pretrained=pypi:efficientnet-lite1"
  "lite2|--config.model.name=tf_efficientnet_lite2 --config.model.pretrained=pypi:efficientnet-lite2"
)

names=()
for entry in "${ablations[@]}"; do
  name="${entry%%|*}"; overrides="${entry#*|}"
  if [[ -n "$only" && ",$only," != *",$name,"* ]]; then continue; fi
  names+=("$name")
  # shellcheck disable=SC2206  # the overrides are flags split on spaces, none holds one
  cmd=("$python" -m effnet_jax.cli.train --config=configs/pneumonia_lite0.py --workdir="$root/$name"
       --config.image_size="$image_size" --config.progress_bar=false $base_overrides $overrides)
  if grep -qs '"split": "run"' "$root/$name/metrics.jsonl"; then
    echo "ablate_pneumonia.sh: $root/$name has finished; skipping" >&2
    continue
  fi
  echo "+ ${cmd[*]}" >&2
  if [[ $dry_run -eq 0 ]]; then "${cmd[@]}"; fi
done
if [[ ${#names[@]} -eq 0 ]]; then echo "ablate_pneumonia.sh: --only=$only names no ablation" >&2; exit 2; fi
if [[ $dry_run -eq 0 ]]; then
  "$python" -m effnet_jax.cli.results "${names[@]/#/$root/}"
fi
