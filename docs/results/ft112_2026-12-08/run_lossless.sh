#!/usr/bin/env bash
# Sixteenth session, second try: the 112 px fine-tune on lossless (PNG) packs
# (docs/cross-source.md, "the 112 px fine-tune on lossless crops"). ~15 min on 2 CPU cores.
# SIZE, TAG, OUT and CFG default to this run's; the seventeenth session's 128 px fine-tune from
# v8 sets them (docs/results/ft128_2026-12-08/run.sh).
set -euo pipefail
export PYTHONPATH=.
PY=${PY:-.venv/bin/python}
SIZE=${SIZE:-112}
TAG=${TAG:-ft112}
OUT=${OUT:-docs/results/ft112_2026-12-08}
W=src/napari_ddrnet/weights
CFG=${CFG:-training/configs/gen112_ft_from_v7.json}
P=packs${SIZE}_38_png
MIX="pbc_train:0.75 bccd_trainfold:10 txl_pseudo9:5"
[ -f $P/pbc_train.npz ] || $PY -m training.prepare --out $P --only pbc bccd --fov-um 38 --size $SIZE --lossless
[ -f $P/txl_pseudo9.npz ] || $PY -m training.pseudo_label --teacher $W/ddrnet_wbc8_v2.safetensors \
    $W/ddrnet_wbc8_v3.safetensors $W/ddrnet_wbc8_v5.safetensors --reviewed --rank wbc5 \
    --fov-um 38 --size $SIZE --lossless --out $P/txl_pseudo9.npz
for s in 0 1; do
  run=runs/$TAG/png_s$s
  rm -rf $run ${run}_recal
  $PY -m training.train --config $CFG --out $run --packs $P --device cpu --threads 2 --set seed=$s
  $PY -m training.recalibrate --run $run --packs $P --packs-train $MIX --out ${run}_recal \
      --val pbc_val bccd_valfold > ${run}_recal.log 2>&1
  mkdir -p $OUT/png_s$s
  cp $run/train.log $OUT/png_s$s/train.log
  cp ${run}_recal.log $OUT/png_s$s/recalibrate.log
  $PY -m training.export --run ${run}_recal --out runs/candidates/${TAG}_png_s$s.safetensors --config $CFG
done
S=$(OUT=$OUT $PY - <<'PY'
import json, os, sys
v = {s: json.loads(open(f"{os.environ['OUT']}/png_s{s}/recalibrate.log").read().strip().splitlines()[-1])["val_macro_f1"]
     for s in (0, 1)}
for s, f in v.items():
    print(f"seed {s}: validation after the re-estimate {f:.4f}", file=sys.stderr)
print(max(v, key=v.get))
PY
)
C=runs/candidates/${TAG}_png_s$S.safetensors
echo "candidate: seed $S ($C)"
$PY -m benchmarks.accuracy --weights $C --out $OUT                           # clause 1
