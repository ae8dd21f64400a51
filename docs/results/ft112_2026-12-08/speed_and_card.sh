#!/usr/bin/env bash
# Sixteenth session: ddrnet_wbc8_v8's CPU throughput against ResNet-18 at 112 px (the issue's
# ">= 3x at equal input and batch 64"), then its "unlike the training data" card by v7's command.
set -euo pipefail
export PYTHONPATH=.
PY=${PY:-.venv/bin/python}
OUT=docs/results/ft112_2026-12-08
$PY -m benchmarks.classifier_speed --size 112 --batches 64 --cpu-models ddrnet resnet18 \
    --out $OUT/speed112 2>&1 | tee $OUT/speed112.log
$PY -m benchmarks.domain_shift --weights src/napari_ddrnet/weights/ddrnet_wbc8_v8.safetensors \
    --packs packs112_38_png --reference per-lab --layers all stem+drdb drdb glfeb stem \
    --mild five --kaggle shifted --write-card
