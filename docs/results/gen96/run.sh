#!/usr/bin/env bash
# Ninth session: the v3 recipe (training/configs/wbc8_long.json) from scratch at 96 px, 38 um
# crops (docs/cross-source.md, "96 px from scratch, at convergence"). ~75 min on 2 CPU cores.
set -euo pipefail
export PYTHONPATH=.
PY=${PY:-.venv/bin/python}
[ -f packs96_38/pbc_train.npz ] || $PY -m training.prepare --out packs96_38 --only pbc bccd --fov-um 38 --size 96
$PY -m training.train --config training/configs/wbc8_long.json --out runs/gen96/long_bn \
    --packs packs96_38 --device cpu --threads 2
mkdir -p docs/results/gen96/long_bn
cp runs/gen96/long_bn/train.log runs/gen96/long_bn/summary.json runs/gen96/long_bn/meta.json docs/results/gen96/long_bn/
