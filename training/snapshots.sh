#!/usr/bin/env bash
# Score a training run every N epochs while it trains (reporting only: nothing is selected on
# the test pack). Each snapshot is evaluated as trained, and after its BatchNorm statistics are
# re-estimated on a share of the clean training pack (training.recalibrate).
#   usage: bash training/snapshots.sh RUN TRAIN_PACK TEST_PACK [EVERY=5] [PACKS=packs]
#   e.g.   bash training/snapshots.sh runs/kaggle4_ddrnet_field224 kaggle_field224_train \
#              kaggle_field224_test        (start it beside the training run)
set -uo pipefail
RUN=$1 TRAIN=$2 TEST=$3 EVERY=${4:-5} PACKS=${5:-packs}
PY=${PYTHON:-python3}
export PYTHONPATH=src:.${PYTHONPATH:+:$PYTHONPATH}
done_e=" "
snap() {
  local S=${RUN}_e$1
  mkdir -p "$S" && cp "$RUN/meta.json" "$RUN/best.pt" "$S/"
  $PY -m training.evaluate --run "$S" --packs "$PACKS" --test "$TEST" --device cpu > "$S/eval.out" 2>&1
  $PY -m training.recalibrate --run "$S" --packs "$PACKS" --packs-train "$TRAIN:0.2" \
    --batch-size 256 --out "${S}_recal" > "${S}_recal.out" 2>&1
  $PY -m training.evaluate --run "${S}_recal" --packs "$PACKS" --test "$TEST" --device cpu \
    >> "${S}_recal.out" 2>&1
}
while pgrep -f "training.train .*--out $RUN( |$)" > /dev/null; do
  n=$(wc -l < "$RUN/train.log" 2>/dev/null || echo 0)
  if [ "$n" -gt 0 ] && [ $((n % EVERY)) -eq 0 ] && [[ "$done_e" != *" $n "* ]]; then
    sleep 20  # best.pt is written just after the epoch's log line
    snap "$n"
    done_e="$done_e$n "
  fi
  sleep 30
done
# The run's last epoch, when the loop above ended before it got to it.
n=$(wc -l < "$RUN/train.log" 2>/dev/null || echo 0)
if [ "$n" -gt 0 ] && [ $((n % EVERY)) -eq 0 ] && [[ "$done_e" != *" $n "* ]]; then
  snap "$n"
fi
