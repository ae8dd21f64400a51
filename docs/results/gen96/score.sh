#!/usr/bin/env bash
# Written in the tenth session, run in the eleventh: answer the pre-registered 96 px question (docs/cross-source.md, "96 px from
# scratch, at convergence") after run.sh's run finished (resumed from its epoch-2 last.pt).
# Clause 1: selected validation >= v3's 0.9166 + 0.005. Clause 2: DDRNet >= 3x ResNet-18 CPU
# throughput at 96 px, batch 64 (median of interleaved rounds). Only if both hold is the model scored on the test sets.
# Its output: docs/results/gen96/score.log (bash docs/results/gen96/score.sh > score.log 2>&1).
set -euo pipefail
export PYTHONPATH=.
PY=${PY:-.venv/bin/python}
OUT=docs/results/gen96
mkdir -p $OUT/long_bn
cp runs/gen96/long_bn/train.log runs/gen96/long_bn/summary.json runs/gen96/long_bn/meta.json $OUT/long_bn/
$PY - <<'PY' | tee $OUT/rule.log
import json
s = json.load(open("docs/results/gen96/long_bn/summary.json"))
h = [e for e in s["history"] if e["epoch"] >= s["config"]["select_after_epoch"]]
best = max(h, key=lambda e: e["val_macro_f1"])
need = 0.9166 + 0.005
print(f"selected epoch {best['epoch']}: val macro-F1 {best['val_macro_f1']:.4f} "
      f"(PBC val {best['val_macro_f1_pbc_val']:.4f} / BCCD fold {best['val_macro_f1_bccd_valfold']:.4f}); "
      f"summary best {s['best_val_macro_f1']:.4f}; clause 1 needs >= {need:.4f}: "
      f"{'PASS' if s['best_val_macro_f1'] >= need else 'FAIL'}")
PY
$PY -m benchmarks.classifier_speed --size 96 --batches 64 --cpu-models ddrnet resnet18 \
    --out $OUT/speed96 | tee $OUT/speed96.log
$PY - <<'PY' | tee -a $OUT/rule.log
import json
rows = json.load(open("docs/results/gen96/speed96/classifier_speed_cpu.json"))["rows"]
r = next(x["ratio_vs_resnet18"] for x in rows if x["model"] == "ddrnet" and x["batch"] == 64)
print(f"clause 2: DDRNet x{r} ResNet-18 CPU throughput at 96 px, batch 64 (needs >= 3): "
      f"{'PASS' if r >= 3 else 'FAIL'}")
PY
if [ "$(grep -c PASS $OUT/rule.log)" = 2 ]; then
  $PY -m training.export --run runs/gen96/long_bn --out runs/gen96/export/ddrnet_gen96.safetensors \
      --config training/configs/wbc8_long.json
  $PY -m benchmarks.accuracy --weights runs/gen96/export/ddrnet_gen96.safetensors --out $OUT/score
  $PY -m benchmarks.unseen_lab --weights runs/gen96/export/ddrnet_gen96.safetensors --out $OUT/score
fi
