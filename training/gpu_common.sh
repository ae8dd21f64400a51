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
