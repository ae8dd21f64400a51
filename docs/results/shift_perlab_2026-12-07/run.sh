#!/usr/bin/env bash
# Fourteenth session: the per-lab "unlike the training data" candidate with Kaggle TEST counted
# as shifted, written into a copy of v7's card, then the fresh gate on TXL-PBC images
# (docs/cross-source.md, "which sets the warning is for"). The copy keeps v7's file name so the
# result files are named as a run on the package weights would name them.
set -euo pipefail
export PYTHONPATH=.
PY=${PY:-.venv/bin/python}
OUT=docs/results/shift_perlab_2026-12-07
C=runs/candidates/perlab/ddrnet_wbc8_v7.safetensors
mkdir -p $(dirname $C)
cp src/napari_ddrnet/weights/ddrnet_wbc8_v7.safetensors $C
cp src/napari_ddrnet/weights/ddrnet_wbc8_v7.json ${C%.safetensors}.json
$PY -m benchmarks.domain_shift --weights $C --packs packs96_38 --reference per-lab \
    --layers all stem+drdb drdb glfeb stem --mild five --kaggle shifted --write-card --out $OUT
$PY -m benchmarks.shift_gate --weights $C --out $OUT
