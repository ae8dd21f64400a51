#!/usr/bin/env bash
# Fifteenth session: `count` as a user runs it on one lab's folder of fields (the 350 TXL-PBC
# Raabin-WBC images, linked into one folder), to see the folder-median pixel size for the
# fields whose red cells cannot be measured. Output: count.log (stderr, wall time) beside this.
set -euo pipefail
D=${DDRNET_DATA:-../shared/data}/txlpbc_train
F=$(mktemp -d)
python3 - "$D" "$F" <<'PY'
import csv, os, sys
root, out = sys.argv[1:]
for name in sorted({r["image"] for r in csv.DictReader(open(f"{root}/boxes.csv"))
                    if r["source"] == "raabin"}):
    os.symlink(os.path.abspath(f"{root}/images/{name}"), f"{out}/{name}")
PY
OUT=docs/results/raabin_count_2026-12-07
{ /usr/bin/time -f "wall %e s" .venv/bin/napari-ddrnet count "$F" --cells-csv "$F/cells.csv" \
    --counts-csv "$F/counts.csv" --device cpu --quiet; } 2>&1 | sed "s|$F|FOLDER|g" > $OUT/count.log
rm -rf "$F"
