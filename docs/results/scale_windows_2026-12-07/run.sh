#!/usr/bin/env bash
# Thirteenth session: the lazy path no longer holds its nine sample windows (and their RGB
# copy) through the whole run. Before (the commit before the change, in a worktree) and after,
# back to back on the same machine; the after run's JSON was copied to benchmarks/results/scale.json.
# trace_peak.py (tracemalloc, run by hand before and after: trace_peak.log) found the windows.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
OUT=docs/results/scale_windows_2026-12-07
BEFORE=${BEFORE:-$(git rev-parse HEAD~1)}
rm -rf /tmp/scale_wt && git worktree add -f /tmp/scale_wt "$BEFORE" >/dev/null
(cd /tmp/scale_wt && PYTHONPATH=/tmp/scale_wt/src "$OLDPWD/$PY" -m benchmarks.scale --out /tmp/scale_wt_out) \
  | tee "$OUT/before.log"
git worktree remove --force /tmp/scale_wt
$PY -m benchmarks.scale --out /tmp/scale_after_out | tee "$OUT/after.log"
