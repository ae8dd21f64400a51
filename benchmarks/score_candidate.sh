#!/usr/bin/env bash
# Score one trained candidate on every source, for reporting (LISC never selects anything):
# export the run as package weights, then benchmarks.cross_source on PBC test, the BCCD test
# pack and fields end to end, Kaggle TEST and LISC under every test-time mode.
#   usage: PYTHON=.venv/bin/python bash benchmarks/score_candidate.sh RUN PACKS NAME CONFIG \
#            [cross_source options, e.g. --lisc-side 224]
#   e.g.   bash benchmarks/score_candidate.sh runs/gen38/long_bn_recal packs38 long_bn38_recal \
#            training/configs/wbc8_long.json
# Writes runs/candidates/NAME.safetensors (+ .json) and benchmarks/results/cross_source_NAME.*
set -euo pipefail
RUN=${1:?RUN}; PACKS=${2:?PACKS}; NAME=${3:?NAME}; CFG=${4:?CONFIG}; shift 4
PY=${PYTHON:-python3}
export PYTHONPATH=src:.${PYTHONPATH:+:$PYTHONPATH}
mkdir -p runs/candidates
$PY -m training.export --run "$RUN" --out "runs/candidates/$NAME.safetensors" --config "$CFG"
$PY -m benchmarks.cross_source --weights "runs/candidates/$NAME.safetensors" --name "$NAME" \
  --packs "$PACKS" --bccd-fields "$@"
