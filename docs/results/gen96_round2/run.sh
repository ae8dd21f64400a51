#!/usr/bin/env bash
# Thirteenth session: a second self-training round on the 96 px base with v5 + v6 + v7 as the
# teachers (docs/cross-source.md, "a second self-training round"). Needs
# runs/gen96/export/ddrnet_gen96.safetensors (docs/results/gen96/score.sh).
set -euo pipefail
export PYTHONPATH=.
PY=${PY:-.venv/bin/python}
OUT=docs/results/gen96_round2
W=src/napari_ddrnet/weights
P=packs96_38
CFG=training/configs/gen96_ft_labstyle25_round2.json
mkdir -p $OUT
if [ ! -f $P/txl_pseudo10.npz ]; then
  $PY -m training.pseudo_label --teacher $W/ddrnet_wbc8_v5.safetensors $W/ddrnet_wbc8_v6.safetensors \
      $W/ddrnet_wbc8_v7.safetensors --reviewed --rank wbc5 --fov-um 38 --size 96 \
      --out $P/txl_pseudo10.npz > $OUT/pseudo_labels.log 2>&1
fi
cp $P/txl_pseudo10.json $OUT/pseudo_labels.json
for s in 0 1; do
  run=runs/gen96_round2/s$s
  rm -rf $run ${run}_recal
  $PY -m training.train --config $CFG --out $run --packs $P --device cpu --threads 2 --set seed=$s
  $PY -m training.recalibrate --run $run --packs $P \
      --packs-train pbc_train:0.75 bccd_trainfold:10 txl_pseudo10:5 --out ${run}_recal \
      --val pbc_val bccd_valfold > ${run}_recal.log 2>&1
  mkdir -p $OUT/s$s
  cp $run/train.log $OUT/s$s/train.log
  cp ${run}_recal.log $OUT/s$s/recalibrate.log
  $PY -m training.export --run ${run}_recal --out runs/candidates/gen96_round2_s$s.safetensors \
      --config $CFG
done
