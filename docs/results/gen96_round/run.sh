#!/usr/bin/env bash
# Eleventh session: the palette round on the 96 px base (docs/cross-source.md, "the palette
# round on the 96 px base"). Needs runs/gen96/export/ddrnet_gen96.safetensors
# (docs/results/gen96/score.sh). ~30 min on 2 CPU cores for training, ~25 min for the scores.
set -euo pipefail
export PYTHONPATH=.
PY=${PY:-.venv/bin/python}
OUT=docs/results/gen96_round
W=src/napari_ddrnet/weights
P=packs96_38
mkdir -p $OUT
if [ ! -f $P/txl_pseudo9.npz ]; then
  $PY -m training.pseudo_label --teacher $W/ddrnet_wbc8_v2.safetensors $W/ddrnet_wbc8_v3.safetensors \
      $W/ddrnet_wbc8_v5.safetensors --reviewed --rank wbc5 --fov-um 38 --size 96 --out $P/txl_pseudo9.npz
fi
cp $P/txl_pseudo9.json $OUT/pseudo_labels.json
for s in 0 1; do
  run=runs/gen96_round/s$s
  rm -rf $run ${run}_recal
  $PY -m training.train --config training/configs/gen96_ft_labstyle25.json --out $run \
      --packs $P --device cpu --threads 2 --set seed=$s
  $PY -m training.recalibrate --run $run --packs $P \
      --packs-train pbc_train:0.75 bccd_trainfold:10 txl_pseudo9:5 --out ${run}_recal \
      --val pbc_val bccd_valfold > ${run}_recal.log 2>&1
  mkdir -p $OUT/s$s
  cp $run/train.log $OUT/s$s/train.log
  cp ${run}_recal.log $OUT/s$s/recalibrate.log
  $PY -m training.export --run ${run}_recal --out runs/candidates/gen96_round_s$s.safetensors \
      --config training/configs/gen96_ft_labstyle25.json
done
