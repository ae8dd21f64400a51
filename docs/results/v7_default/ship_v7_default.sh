#!/usr/bin/env bash
# Make ddrnet_wbc8_v7 the default (twelfth session, docs/cross-source.md): its field time was
# measured once on the faster not-specimen path (pipeline_speed_v7.log here, v6 right after in
# the same run), then every figure that names the default is regenerated. v6's default logs
# were kept under _ddrnet_wbc8_v6 (git mv) before DEFAULT_WEIGHTS changed (the field timing it
# replaced was v5's, from before v6 shipped: pipeline_speed_ddrnet_wbc8_v5.*). The clause-4
# measurement, run first and alone:
#   python -m benchmarks.pipeline_speed --weights src/napari_ddrnet/weights/ddrnet_wbc8_v7.safetensors --out /tmp/ps_v7 > docs/results/v7_default/pipeline_speed_v7.log
#   python -m benchmarks.pipeline_speed --weights src/napari_ddrnet/weights/ddrnet_wbc8_v6.safetensors --out /tmp/ps_v6 > docs/results/v7_default/pipeline_speed_v6_same_run.log
#   (their JSONs copied here)
set -euo pipefail
export PYTHONPATH=.
PY=${PY:-.venv/bin/python}
W=src/napari_ddrnet/weights/ddrnet_wbc8_v7.safetensors
OUT=docs/results/v7_default
# The "unlike the training data" score over the pre-registered layer groups; the rule picks one
# and --write-card puts its threshold and layer names into v7's card.
$PY -m benchmarks.domain_shift --weights $W --packs packs96_38 \
    --layers all stem+drdb drdb glfeb stem --write-card
$PY -m benchmarks.accuracy --write-card      # benchmarks/results/accuracy.log: this section of the log
$PY -m benchmarks.unseen_lab                 # benchmarks/results/unseen_lab.log: likewise
# The default's field timing is the clause-4 measurement (not measured again).
cp $OUT/pipeline_speed_ddrnet_wbc8_v7.json benchmarks/results/pipeline_speed.json
{ echo "# python -m benchmarks.pipeline_speed --weights $W --out $OUT  (2026-12-07, twelfth session: the measurement that decided clause 4, copied here as the default's figure; v6 in the same run: $OUT/pipeline_speed_v6_same_run.log)"
  cat $OUT/pipeline_speed_v7.log; } > benchmarks/results/pipeline_speed.log
# v7's card had an empty `metrics` block (its run was never put through training.evaluate
# before export): the pack figures of its run, written into the card (eval.json/md copied here).
$PY -m training.evaluate --run runs/gen96_round/s1_recal --packs packs96_38 --test pbc_test bccd_test --device cpu
cp runs/gen96_round/s1_recal/eval.json runs/gen96_round/s1_recal/eval.md $OUT/
$PY - <<'PY'
import json
from pathlib import Path
from training.export import METRIC_KEYS, update_card
ev = json.loads(Path("runs/gen96_round/s1_recal/eval.json").read_text())
update_card(Path("src/napari_ddrnet/weights/ddrnet_wbc8_v7.safetensors"), "metrics",
            {t: {k: r[k] for k in METRIC_KEYS} for t, r in ev.items()})
PY
# Run alone, after the above, with the new default (quiet VM; stdout with a header line as
# benchmarks/results/cohort_v7_default.log and scale.log; the 2026-11-27 scale run kept as
# scale_2026-11-27.*):
$PY -m benchmarks.cohort --side 32768 --big-workers 2 --medium 8192 --sweep 0 --tag cohort_v7_default
$PY -m benchmarks.scale
# The two models back to back (scale_ddrnet_wbc8_v{6,7}.log):
$PY -m benchmarks.scale --weights ddrnet_wbc8_v6
$PY -m benchmarks.scale --weights ddrnet_wbc8_v7
# The 1 GPix slide in napari (slide_viewer_v7_default.{log,json}: stdout with a header line,
# the JSON copied from /tmp/sv_out):
xvfb-run -a $PY -m benchmarks.slide_viewer --side 32768 --region 8192 16384 --whole --out /tmp/sv_out
# The confidence signal beside the card's (now stem-only) score, reported only:
$PY -m benchmarks.confidence_shift --packs packs96_38
# The epochs tests/test_adapt.py's whole-run AdaBN test needs with the 96 px default:
$PY docs/results/v7_default/adapt_epochs_probe.py > docs/results/v7_default/adapt_epochs_probe.log
