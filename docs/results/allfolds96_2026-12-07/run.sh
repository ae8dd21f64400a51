#!/usr/bin/env bash
# Fifteenth session: v7's fine-tune on every labelled crop, validation folds included
# (docs/cross-source.md, "v7's fine-tune on every labelled crop"). Needs the 96 px base
# (runs/gen96/export/ddrnet_gen96.safetensors) and packs96_38 with txl_pseudo9
# (docs/results/gen96_round/run.sh). ~5 min of training on 2 CPU cores, ~25 min of scores.
set -euo pipefail
export PYTHONPATH=.
PY=${PY:-.venv/bin/python}
OUT=docs/results/allfolds96_2026-12-07
P=packs96_38
RUN=runs/allfolds96
C=runs/candidates/allfolds96.safetensors
V7=src/napari_ddrnet/weights/ddrnet_wbc8_v7.safetensors
rm -rf $RUN ${RUN}_recal
$PY -m training.train --config training/configs/gen96_ft_allfolds.json --out $RUN \
    --packs $P --device cpu --threads 2
# v7's re-estimate with the validation folds added as in training; the validation it prints
# is on crops it trained on (reported, decides nothing).
$PY -m training.recalibrate --run $RUN --packs $P \
    --packs-train pbc_train:0.75 pbc_val:0.75 bccd_trainfold:10 bccd_valfold:10 txl_pseudo9:5 \
    --out ${RUN}_recal --val pbc_val bccd_valfold > $OUT/recalibrate.log 2>&1
cp $RUN/train.log $OUT/train.log
$PY -m training.export --run ${RUN}_recal --out $C --config training/configs/gen96_ft_allfolds.json
# Clause 1 failed (score.log): the fifteenth session stopped the remaining scores and ran
# benchmarks.unseen_lab alone (unseen_lab.log).
{
$PY -m benchmarks.accuracy --weights $C --out $OUT                         # clause 1
$PY -m benchmarks.lab_style_probe v7=$V7 cand=$C --packs $P --cast-set pbc_test \
    --name lab_style_probe --out $OUT                                       # clause 2
$PY -m benchmarks.adaptation --sets lisc --seeds 5 --sizes 10 --no-timing --weights $C \
    --out $OUT --name adaptation                                            # clause 3
$PY -m benchmarks.unseen_lab --weights $C --out $OUT                        # reported only
} > $OUT/score.log 2>&1
