#!/usr/bin/env bash
# Ship the second try's candidate as ddrnet_wbc8_v6 and regenerate every figure that names the
# default (the card's reproduce_steps, after the export).
set -euo pipefail
export PYTHONPATH=.
PY=${PY:-.venv/bin/python}
RUN=runs/lab_style/labstyle25_s1_recal
CFG="--config training/configs/wbc8_v5_ft_labstyle25.json --extra training/configs/wbc8_v6_card.json"
W=src/napari_ddrnet/weights/ddrnet_wbc8_v6.safetensors
$PY -m benchmarks.cross_source --weights $W --packs packs30 --lisc-side 224 --bccd-fields
$PY -m training.export --run $RUN --out $W $CFG --benchmark benchmarks/results/cross_source_ddrnet_wbc8_v6.json
$PY -m benchmarks.domain_shift --write-card
$PY -m benchmarks.accuracy --write-card
$PY -m benchmarks.unseen_lab
$PY -m benchmarks.adaptation --sets lisc --seeds 5 --sizes 10 --no-timing --weights $W --name adaptation_ddrnet_wbc8_v6
