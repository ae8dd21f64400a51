#!/usr/bin/env bash
# The ninth session's palette experiment (docs/cross-source.md, "other labs' palettes on
# labelled cells"), as run on the 2-core CPU. From the project root, with packs30 made
# (python -m training.prepare --out packs30 --only pbc bccd kaggle_test --fov-um 30).
set -euo pipefail
export PYTHONPATH=.
PY=${PY:-.venv/bin/python}
OUT=docs/results/lab_style_2026-12-07
W=src/napari_ddrnet/weights
if [ ! -f packs30/txl_pseudo9.npz ]; then
  $PY -m training.pseudo_label --teacher $W/ddrnet_wbc8_v2.safetensors $W/ddrnet_wbc8_v3.safetensors \
      $W/ddrnet_wbc8_v5.safetensors --reviewed --rank wbc5 --out packs30/txl_pseudo9.npz
fi
cp packs30/txl_pseudo9.json $OUT/pseudo_labels.json
for arm in ctrl labstyle; do
  for s in 0 1; do
    run=runs/lab_style/${arm}_s$s
    rm -rf $run ${run}_recal
    $PY -m training.train --config training/configs/wbc8_v5_ft_$arm.json --out $run \
        --packs packs30 --device cpu --threads 2 --set seed=$s
    $PY -m training.recalibrate --run $run --packs packs30 \
        --packs-train pbc_train:0.75 bccd_trainfold:10 txl_pseudo9:5 --out ${run}_recal \
        --val pbc_val bccd_valfold > ${run}_recal.log 2>&1
    mkdir -p $OUT/${arm}_s$s
    cp $run/train.log $OUT/${arm}_s$s/train.log
    cp ${run}_recal.log $OUT/${arm}_s$s/recalibrate.log
    $PY -m training.export --run ${run}_recal --out runs/candidates/lab_style_${arm}_s$s.safetensors \
        --config training/configs/wbc8_v5_ft_$arm.json
  done
done
$PY -m benchmarks.lab_style_probe v5=$W/ddrnet_wbc8_v5.safetensors \
    $(for a in ctrl labstyle; do for s in 0 1; do echo ${a}_s$s=runs/candidates/lab_style_${a}_s$s.safetensors; done; done) \
    --packs packs30 --name lab_style_probe --out $OUT
