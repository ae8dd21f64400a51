#!/usr/bin/env bash
# Package the palette round's candidate on the 96 px base as ddrnet_wbc8_v7, opt-in (it missed
# the rule's speed clause, so ddrnet_wbc8_v6 stays the default): the card's reproduce_steps after
# the training. The candidate's LISC figures through `count --single-cell` are score.sh's
# (unseen_lab.json here; the same tensors as the packaged file).
set -euo pipefail
export PYTHONPATH=.
PY=${PY:-.venv/bin/python}
RUN=runs/gen96_round/s1_recal
CFG="--config training/configs/gen96_ft_labstyle25.json --extra training/configs/wbc8_v7_card.json"
W=src/napari_ddrnet/weights/ddrnet_wbc8_v7.safetensors
OUT=docs/results/gen96_round
$PY -m training.export --run $RUN --out $W $CFG
$PY -m benchmarks.cross_source --weights $W --packs packs96_38 --lisc-side 224 --bccd-fields
$PY -m training.export --run $RUN --out $W $CFG --benchmark benchmarks/results/cross_source_ddrnet_wbc8_v7.json
$PY -m benchmarks.domain_shift --weights $W --packs packs96_38 --write-card
$PY -m benchmarks.accuracy --weights $W --write-card --out benchmarks/results
$PY -m benchmarks.adaptation --sets lisc --seeds 5 --sizes 10 --no-timing --weights $W --name adaptation_ddrnet_wbc8_v7
# The default timed once right after, for the docs' comparison (not part of the rule):
# pipeline_speed_v6_same_hour.log here.
$PY -m benchmarks.pipeline_speed --weights src/napari_ddrnet/weights/ddrnet_wbc8_v6.safetensors \
    --out $OUT > $OUT/pipeline_speed_v6_same_hour.log
# The LISC subset tests/test_accuracy.py checks (every 3rd image): lisc_every_third.log here.
$PY - <<'PY' | tee $OUT/lisc_every_third.log
import sys
sys.path.insert(0, "tests")
from test_accuracy import _lisc_every_third
from napari_ddrnet.classify import Classifier
for name in ("ddrnet_wbc8_v7", "ddrnet_wbc8_v6"):
    print(f"{name}: {100 * _lisc_every_third(Classifier(name, device='cpu', tta=True)):.1f} % "
          "of every 3rd LISC image (429), 5-class, TTA")
PY
