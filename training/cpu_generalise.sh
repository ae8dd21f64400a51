#!/usr/bin/env bash
# The generalise suite (training/gpu_generalise.sh) run on the CPU, one job after another so
# each gets every core: at 64 px one epoch of wbc8_long (14,122 crops, strong augmentation) takes
# about 28 s on 2 cores when nothing else runs (docs/results/gen*/long_bn/train.log).
#   usage: PYTHON=.venv/bin/python bash training/cpu_generalise.sh RUNS [PACKS=packs] [JOBS="long_bn long_gn ft20_bn"]
# Back here, LISC and the other sources for each run (reporting only, never selection):
#   python -m benchmarks.cross_source --weights RUNS/long_bn_recal --name long_bn_recal
set -uo pipefail
RUNS=${1:?usage: cpu_generalise.sh RUNS [PACKS] [JOBS]}
PACKS=${2:-packs}
JOBS=${3:-long_bn long_gn ft20_bn}
LIMIT=${LIMIT:-7200}
TESTS="pbc_test bccd_test"
RECAL="--packs-train pbc_train:0.75 bccd_trainfold:10 --val pbc_val bccd_valfold"
EXTRA="--device cpu --threads $(nproc) ${EXTRA:-}"
# shellcheck source=training/gpu_common.sh
source "$(dirname "$0")/gpu_common.sh"

for j in $JOBS; do
  case $j in
    long_bn) job long_bn training/configs/wbc8_long.json 60 "$RECAL" ;;
    long_gn) job long_gn training/configs/wbc8_long.json 60 "" --set 'ddrnet={"norm": "group"}' ;;
    ft20_bn) job ft20_bn training/configs/wbc8_v2.json 20 "$RECAL" ;;
    *) echo "unknown job $j" >&2; exit 2 ;;
  esac
done
echo "all done" >> "$RUNS/status.txt"
