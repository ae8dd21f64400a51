#!/usr/bin/env bash
# The cross-source classifier runs of issue 7 that a 2-core CPU cannot do, in one call to a lent
# GPU: the shipped model's strong stain/colour/blur/JPEG/scale augmentation (wbc8_v2) trained to
# convergence instead of a 3-epoch fine-tune, with BatchNorm and with GroupNorm, from scratch
# (training/configs/wbc8_long.json, 60 epochs) and as a 20-epoch fine-tune of the PBC model.
# Selection is on PBC val + the BCCD validation fold only (LISC is never used); each run is then
# scored on pbc_test and bccd_test, and the BatchNorm ones again after re-estimating their
# statistics on the clean training mixture (training.recalibrate), as for the shipped model.
#   usage: bash training/gpu_generalise.sh RUNS [PACKS=packs] [LIMIT_S=480] [EPOCHS_SCALE=1]
#   on the device (carry "packs": pbc_*, bccd_* from `python -m training.prepare --only pbc
#   bccd`): bash training/gpu_generalise.sh /tmp/gen packs 480   -> $OUT/generalise.tgz
# Back here, LISC and the other sources for each run (reporting only, never selection):
#   python -m benchmarks.cross_source --weights runs/gen/long_bn_recal --name long_bn_recal
# A CPU smoke run: EXTRA="--limit 64 --device cpu --threads 1" bash training/gpu_generalise.sh \
#   /tmp/gen packs 300 0.02
set -uo pipefail
RUNS=${1:?usage: gpu_generalise.sh RUNS [PACKS] [LIMIT_S] [EPOCHS_SCALE]}
PACKS=${2:-packs}
LIMIT=${3:-480}
SCALE=${4:-1}
TESTS="pbc_test bccd_test"
RECAL="--packs-train pbc_train:0.75 bccd_trainfold:10 --val pbc_val bccd_valfold"
# shellcheck source=training/gpu_common.sh
source "$(dirname "$0")/gpu_common.sh"

epochs() { $PY -c "print(max(1, round($1 * $SCALE)))"; }

job long_bn training/configs/wbc8_long.json "$(epochs 60)" "$RECAL" &
job long_gn training/configs/wbc8_long.json "$(epochs 60)" "" --set 'ddrnet={"norm": "group"}' &
job ft20_bn training/configs/wbc8_v2.json "$(epochs 20)" "$RECAL" &
wait
echo "all done" >> "$RUNS/status.txt"
# Weights (1.2 MB each) and reports back in one file.
pack_reports generalise --exclude=last.pt --exclude='*.png'
