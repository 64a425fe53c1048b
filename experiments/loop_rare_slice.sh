#!/usr/bin/env bash
# The rare-slice proof of docs/results.md: each arm (an experiment config) x each seed, one after the other,
# then the report (table + weights plot). Extra arguments are passed to every run as Hydra overrides.
#   bash experiments/loop_rare_slice.sh                       # fixed vs miner, seeds 0 1 2
#   ARMS="rare_slice_uniform" bash experiments/loop_rare_slice.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-logs/rare_slice}
ARMS=${ARMS:-"rare_slice_fixed rare_slice_miner"}
SEEDS=${SEEDS:-"0 1 2"}
for seed in $SEEDS; do
  for arm in $ARMS; do
    if [ -f "$OUT/$arm/seed$seed/csv/metrics.csv" ] && grep -q "val/fg_iou" "$OUT/$arm/seed$seed/csv/metrics.csv"; then
      echo "skip $arm seed $seed (done)"; continue
    fi
    mkdir -p "$OUT"; start=$(date +%s)
    python train/train.py experiment="$arm" seed="$seed" hydra.run.dir="$OUT/$arm/seed$seed" print_config=false "$@" \
      > "$OUT/$arm-seed$seed.log" 2>&1 || { mkdir -p "$OUT"; echo "FAILED $arm seed $seed, see $OUT/$arm-seed$seed.log"; exit 1; }
    echo "$arm seed $seed: $(( $(date +%s) - start )) s"
  done
done
python experiments/loop_rare_slice_report.py "$OUT"
