#!/usr/bin/env bash
# Fourteenth session: a uniform weight soup of the four 96 px fine-tunes (docs/cross-source.md,
# "a weight soup of the four 96 px fine-tunes"), then v7's BatchNorm re-estimate, export and
# the thirteenth session's scores. Needs the runs of docs/results/gen96_round{,2}/run.sh.
set -euo pipefail
export PYTHONPATH=.
PY=${PY:-.venv/bin/python}
OUT=docs/results/soup96_2026-12-07
P=packs96_38
RUN=runs/soup96
C=runs/candidates/soup96.safetensors
rm -rf $RUN ${RUN}_recal
$PY -m training.soup --runs runs/gen96_round/s0 runs/gen96_round/s1 runs/gen96_round2/s0 \
    runs/gen96_round2/s1 --out $RUN > $OUT/soup.log
# v7's own re-estimate (runs/gen96_round/s1_recal.log): the same packs and weights.
$PY -m training.recalibrate --run $RUN --packs $P \
    --packs-train pbc_train:0.75 bccd_trainfold:10 txl_pseudo9:5 --out ${RUN}_recal \
    --val pbc_val bccd_valfold > $OUT/recalibrate.log 2>&1
$PY -m training.export --run ${RUN}_recal --out $C --extra $OUT/extra.json
{
$PY -m benchmarks.accuracy --weights $C --out $OUT                        # clause 1
$PY -m benchmarks.lab_style_probe cand=$C --packs $P --name lab_style_probe --out $OUT  # clause 2
$PY -m benchmarks.adaptation --sets lisc --seeds 5 --sizes 10 --no-timing --weights $C \
    --out $OUT --name adaptation                                           # clause 3
$PY -m benchmarks.unseen_lab --weights $C --out $OUT                       # reported only
} > $OUT/score.log 2>&1
