#!/usr/bin/env bash
# Sixteenth session: v7 fine-tuned at 112 px (docs/cross-source.md, "v7 fine-tuned at 112 px").
# Packs, two seeds at 112 px and the 96 px control; ~25 min on 2 CPU cores. Scoring: score.sh.
set -euo pipefail
export PYTHONPATH=.
PY=${PY:-.venv/bin/python}
OUT=docs/results/ft112_2026-12-08
W=src/napari_ddrnet/weights
CFG=training/configs/gen112_ft_from_v7.json
MIX="pbc_train:0.75 bccd_trainfold:10 txl_pseudo9:5"
TEACH="$W/ddrnet_wbc8_v2.safetensors $W/ddrnet_wbc8_v3.safetensors $W/ddrnet_wbc8_v5.safetensors"
for side in 112 96; do
  P=packs${side}_38
  [ -f $P/pbc_train.npz ] || $PY -m training.prepare --out $P --only pbc bccd --fov-um 38 --size $side
  [ -f $P/txl_pseudo9.npz ] || $PY -m training.pseudo_label --teacher $TEACH --reviewed --rank wbc5 \
      --fov-um 38 --size $side --out $P/txl_pseudo9.npz
done
train() {  # side seed
  local P=packs$1_38 run=runs/ft112/s$2_$1
  rm -rf $run ${run}_recal
  $PY -m training.train --config $CFG --out $run --packs $P --device cpu --threads 2 --set seed=$2
  $PY -m training.recalibrate --run $run --packs $P --packs-train $MIX --out ${run}_recal \
      --val pbc_val bccd_valfold > ${run}_recal.log 2>&1
  mkdir -p $OUT/s$2_$1
  cp $run/train.log $OUT/s$2_$1/train.log
  cp ${run}_recal.log $OUT/s$2_$1/recalibrate.log
  $PY -m training.export --run ${run}_recal --out runs/candidates/ft112_s$2_$1.safetensors --config $CFG
}
train 112 0
train 112 1
train 96 1   # the control, reported only
