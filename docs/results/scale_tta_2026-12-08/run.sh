#!/usr/bin/env bash
# Sixteenth session: scale TTA against the 8-view TTA (docs/cross-source.md, "averaging over
# scales as well as orientations"). ~4 min on 2 CPU cores.
set -euo pipefail
export PYTHONPATH=.
PY=${PY:-.venv/bin/python}
D=docs/results/scale_tta_2026-12-08
[ -f packs96_38/bccd_valfold.npz ] || $PY -m training.prepare --out packs96_38 --only bccd --fov-um 38 --size 96
# Clause 1 (the selection sets)
$PY -m benchmarks.scale_tta_probe --sets pbc_val bccd_valfold --out /tmp/stta_sel | tee $D/selection.log
cp /tmp/stta_sel/scale_tta_probe.json $D/selection.json
# Reported only (clause 1 had failed when these ran)
$PY -m benchmarks.scale_tta_probe --sets pbc_test bccd_fields lisc --out /tmp/stta_rep | tee $D/tests_reported.log
cp /tmp/stta_rep/scale_tta_probe.json $D/tests_reported.json
