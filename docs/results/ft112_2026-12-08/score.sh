#!/usr/bin/env bash
# Sixteenth session: score the 112 px fine-tune by its rule (docs/cross-source.md, "v7
# fine-tuned at 112 px"), after run.sh: clause 1 for the candidate, the control and LISC
# (reported). Output: score.log and the JSON files beside this script.
set -euo pipefail
export PYTHONPATH=.
PY=${PY:-.venv/bin/python}
OUT=docs/results/ft112_2026-12-08
# The candidate: the 112 px seed with the higher validation after the BatchNorm re-estimate.
S=$($PY - <<'PY'
import json, sys
v = {s: json.loads(open(f"docs/results/ft112_2026-12-08/s{s}_112/recalibrate.log").read().strip().splitlines()[-1])["val_macro_f1"]
     for s in (0, 1)}
for s, f in v.items():
    print(f"seed {s}: validation after the re-estimate {f:.4f}", file=sys.stderr)
print(max(v, key=v.get))
PY
)
C=runs/candidates/ft112_s${S}_112.safetensors
echo "candidate: seed $S ($C)"
$PY -m benchmarks.accuracy --weights $C --out $OUT                           # clause 1
$PY -m benchmarks.accuracy --weights runs/candidates/ft112_s1_96.safetensors --out $OUT  # control
$PY -m benchmarks.unseen_lab --weights $C --out $OUT                          # reported only
