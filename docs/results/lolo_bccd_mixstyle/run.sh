#!/usr/bin/env bash
# Leave-BCCD-out students, two arms x two seeds (docs/cross-source.md, seventh session).
# Run from the project root after the pseudo-label pack (pseudo_labels.log) exists.
# Arms as arguments (default: base mixstyle); the stem-only run was `run.sh mixstyle_stem`.
set -euo pipefail
OUT=docs/results/lolo_bccd_mixstyle
if [ $# -gt 0 ]; then ARMS=("$@"); else ARMS=(base mixstyle); fi
for arm in "${ARMS[@]}"; do
  for seed in 0 1; do
    run=runs/lolo_bccd_${arm}_s${seed}
    PYTHONPATH=. .venv/bin/python -m training.train --config training/configs/lolo_bccd_${arm}.json \
      --packs packs30 --out "$run" --threads 2 --set seed=$seed > $OUT/train_${arm}_s${seed}.log 2>&1
    PYTHONPATH=. .venv/bin/python -m training.recalibrate --run "$run" --packs packs30 \
      --packs-train pbc_train:0.75 txl_pseudo_raabin:5 --val pbc_val --out "${run}_recal" \
      > $OUT/recal_${arm}_s${seed}.log 2>&1
  done
done
echo done
