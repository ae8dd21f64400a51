#!/usr/bin/env bash
# Thirteenth session: score the second self-training round by its rule (docs/cross-source.md,
# "a second self-training round"), after run.sh. Output: score.log beside this script.
set -euo pipefail
export PYTHONPATH=.
PY=${PY:-.venv/bin/python}
OUT=docs/results/gen96_round2
# The candidate: the seed with the higher validation after the BatchNorm re-estimate.
S=$($PY - <<'PY'
import json
v = {s: json.loads(open(f"docs/results/gen96_round2/s{s}/recalibrate.log").read().strip().splitlines()[-1])["val_macro_f1"]
     for s in (0, 1)}
for s, f in v.items():
    print(f"seed {s}: validation after the re-estimate {f:.4f}", file=__import__("sys").stderr)
print(max(v, key=v.get))
PY
)
C=runs/candidates/gen96_round2_s$S.safetensors
echo "candidate: seed $S ($C)"
$PY -m benchmarks.accuracy --weights $C --out $OUT                       # clause 1
$PY -m benchmarks.lab_style_probe cand=$C --packs packs96_38 --name lab_style_probe --out $OUT  # clause 2
$PY -m benchmarks.adaptation --sets lisc --seeds 5 --sizes 10 --no-timing --weights $C \
    --out $OUT --name adaptation                                          # clause 3
$PY -m benchmarks.unseen_lab --weights $C --out $OUT                      # reported only
