# Set-up shared by the GPU suites (sourced, with RUNS set): the environment, the python, extra
# train arguments from $EXTRA (e.g. a CPU smoke run's "--limit 64 --device cpu --threads 1")
# and the device the evaluations run on.
export PYTHONPATH=src:.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
EVAL_DEVICE=auto
[[ " ${EXTRA:-} " == *" --device cpu "* ]] && EVAL_DEVICE=cpu
mkdir -p "$RUNS"

# On the device ($OUT set), bring the reports back as one file: a call returns at most 8.
pack_reports() {  # NAME [tar --exclude options...]
  if [ -n "${OUT:-}" ]; then tar czf "$OUT/$1.tgz" -C "$RUNS" "${@:2}" .; fi
}

# job NAME CONFIG EPOCHS RECAL [train args...]: train (at most $LIMIT s), score the last saved
# model on $TESTS; with RECAL (training.recalibrate arguments) non-empty, re-estimate its
# BatchNorm statistics and score that too. Outcomes go to $RUNS/status.txt.
job() {
  local name=$1 cfg=$2 ep=$3 recal=$4; shift 4
  local run=$RUNS/$name
  timeout "$LIMIT" $PY -m training.train --config "$cfg" --packs "$PACKS" --out "$run" \
    --epochs "$ep" "${EXTRA_ARGS[@]}" "$@" > "$run.out" 2>&1
  echo "train $name rc=$?" >> "$RUNS/status.txt"
  # shellcheck disable=SC2086
  $PY -m training.evaluate --run "$run" --packs "$PACKS" --test $TESTS --device $EVAL_DEVICE \
    >> "$run.out" 2>&1
  echo "eval $name rc=$?" >> "$RUNS/status.txt"
  if [ -n "$recal" ]; then
    # shellcheck disable=SC2086
    $PY -m training.recalibrate --run "$run" --packs "$PACKS" $recal --out "${run}_recal" \
      > "${run}_recal.out" 2>&1 &&
    $PY -m training.evaluate --run "${run}_recal" --packs "$PACKS" --test $TESTS \
      --device $EVAL_DEVICE >> "${run}_recal.out" 2>&1
    echo "recal $name rc=$?" >> "$RUNS/status.txt"
  fi
}
