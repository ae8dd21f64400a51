#!/usr/bin/env bash
# Cost of --summary-csv's per-input "unlike the training data" check on a whole-run
# (--single-cell) count: 600 LISC crops split into two "patients", timed with and without it,
# twice, alternating. Usage: bash benchmarks/summary_cost.sh > benchmarks/results/summary_cost.log 2>&1
set -eu  # no pipefail: `ls | head` ends ls with SIGPIPE
cd "$(dirname "$0")/.."
DATA=${DDRNET_DATA:-../shared/data}
B=$PWD/.venv/bin/napari-ddrnet
T=$(mktemp -d)
mkdir "$T/p1" "$T/p2"
ls "$DATA"/lisc/*/*.jpg | head -600 | awk 'NR%2==0' | xargs -I{} ln -s "$(realpath {})" "$T/p1/"
ls "$DATA"/lisc/*/*.jpg | head -600 | awk 'NR%2==1' | xargs -I{} ln -s "$(realpath {})" "$T/p2/"
cd "$T"
echo "# $(date -u +%F) $(nproc) cores; 300 + 300 LISC crops; count --single-cell --device cpu"
for i in 1 2; do
  /usr/bin/time -f "without --summary-csv: %e s" "$B" count --single-cell p1 p2 \
      --cells-csv c.csv --counts-csv n.csv --device cpu --quiet
  /usr/bin/time -f "with --summary-csv: %e s" "$B" count --single-cell p1 p2 \
      --cells-csv c.csv --counts-csv n.csv --summary-csv s.csv --device cpu --quiet
done
rm -rf "$T"
