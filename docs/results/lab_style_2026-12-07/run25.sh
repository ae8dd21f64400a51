#!/usr/bin/env bash
# The palette experiment's second try (lab_style_p 0.25); run.sh made the pack and the C arm.
set -euo pipefail
export PYTHONPATH=.
PY=${PY:-.venv/bin/python}
OUT=docs/results/lab_style_2026-12-07
W=src/napari_ddrnet/weights
for s in 0 1; do
  run=runs/lab_style/labstyle25_s$s
  rm -rf $run ${run}_recal
  $PY -m training.train --config training/configs/wbc8_v5_ft_labstyle25.json --out $run \
      --packs packs30 --device cpu --threads 2 --set seed=$s
  $PY -m training.recalibrate --run $run --packs packs30 \
      --packs-train pbc_train:0.75 bccd_trainfold:10 txl_pseudo9:5 --out ${run}_recal \
      --val pbc_val bccd_valfold > ${run}_recal.log 2>&1
  mkdir -p $OUT/labstyle25_s$s
  cp $run/train.log $OUT/labstyle25_s$s/train.log
  cp ${run}_recal.log $OUT/labstyle25_s$s/recalibrate.log
  $PY -m training.export --run ${run}_recal --out runs/candidates/lab_style_labstyle25_s$s.safetensors \
      --config training/configs/wbc8_v5_ft_labstyle25.json
done
$PY -m benchmarks.lab_style_probe $(for s in 0 1; do echo labstyle25_s$s=runs/candidates/lab_style_labstyle25_s$s.safetensors; done) \
    --packs packs30 --name lab_style_probe25 --out $OUT
