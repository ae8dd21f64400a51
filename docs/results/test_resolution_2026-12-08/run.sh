#!/usr/bin/env bash
# Sixteenth session: v7 read at 112 px, same 38 um field, as is and with BatchNorm re-estimated
# at 112 px (docs/cross-source.md, "more pixels per cell at test time"). ~10 min on 2 CPU cores.
set -euo pipefail
export PYTHONPATH=.
PY=${PY:-.venv/bin/python}
D=docs/results/test_resolution_2026-12-08
[ -f packs96_38/bccd_valfold.npz ] || $PY -m training.prepare --out packs96_38 --only bccd --fov-um 38 --size 96
[ -f packs112_38/pbc_train.npz ] || $PY -m training.prepare --out packs112_38 --only pbc bccd --fov-um 38 --size 112
# Clause 1 (the selection sets)
$PY -m benchmarks.test_resolution_probe --sets pbc_val bccd_valfold --out /tmp/res_sel | tee $D/selection.log
cp /tmp/res_sel/test_resolution_probe.json $D/selection.json
# Reported only (clause 1 had failed when these ran)
$PY -m benchmarks.test_resolution_probe --sets pbc_test bccd_fields lisc --out /tmp/res_rep | tee $D/tests_reported.log
cp /tmp/res_rep/test_resolution_probe.json $D/tests_reported.json
