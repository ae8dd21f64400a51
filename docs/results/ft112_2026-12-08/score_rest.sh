#!/usr/bin/env bash
# Sixteenth session, second try: clauses 2-4 of the rule for the lossless 112 px candidate
# (docs/cross-source.md, "the 112 px fine-tune on lossless crops"), after run_lossless.sh passed
# clause 1. The casts are cut from lossless packs for v7 (96 px) and the candidate (112 px) alike.
set -euo pipefail
export PYTHONPATH=.
PY=${PY:-.venv/bin/python}
OUT=docs/results/ft112_2026-12-08
C=runs/candidates/ft112_png_s0.safetensors
V7=src/napari_ddrnet/weights/ddrnet_wbc8_v7.safetensors
# Clause 4 first, alone on the machine: the candidate, then v7 in the same run.
$PY -m benchmarks.pipeline_speed --weights $C --out $OUT > $OUT/pipeline_speed_candidate.log
$PY -m benchmarks.pipeline_speed --weights $V7 --out $OUT > $OUT/pipeline_speed_v7_same_run.log
# Clause 2: strong cyan and yellow casts on PBC val, as is.
[ -f packs96_38_png/pbc_val.npz ] || $PY -m training.prepare --out packs96_38_png --only pbc bccd \
    --fov-um 38 --size 96 --lossless
$PY -m benchmarks.lab_style_probe v7=$V7 --packs packs96_38_png --name lab_style_probe_v7 --out $OUT
$PY -m benchmarks.lab_style_probe cand=$C --packs packs112_38_png --name lab_style_probe_candidate --out $OUT
# Clause 3: adaptation from 10 reviewed LISC cells per class.
$PY -m benchmarks.adaptation --sets lisc --seeds 5 --sizes 10 --no-timing --weights $C \
    --out $OUT --name adaptation_candidate
# Reported only: LISC through count --single-cell.
$PY -m benchmarks.unseen_lab --weights $C --out $OUT/unseen_lab_candidate
