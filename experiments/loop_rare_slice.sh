#!/usr/bin/env bash
# The rare-slice proof of docs/results.md: every arm (an experiment config) x every seed as one Hydra multirun,
# then the report (table + weights plot). Extra arguments are Hydra overrides for every run.
#   bash experiments/loop_rare_slice.sh                                   # fixed vs miner, seeds 0 1 2
#   ARMS=rare_slice_uniform SEEDS=0,1 bash experiments/loop_rare_slice.sh
#   bash experiments/loop_rare_slice.sh hydra/launcher=slurm             # one SLURM job per run (pip extra "slurm")
# Each run writes $OUT/<arm>/seed<seed>/ (csv metrics, slice_miner.json, its Hydra log train.log).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-logs/rare_slice}
ARMS=${ARMS:-"rare_slice_fixed,rare_slice_miner"}
SEEDS=${SEEDS:-"0,1,2"}
python train/train.py --multirun experiment="$ARMS" seed="$SEEDS" print_config=false \
  hydra.sweep.dir="$OUT" 'hydra.sweep.subdir=${hydra:runtime.choices.experiment}/seed${seed}' "$@"
python experiments/loop_rare_slice_report.py "$OUT"
