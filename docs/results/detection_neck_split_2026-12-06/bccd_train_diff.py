"""BCCD ``train`` fields where the neck split changes the cell count, with the split's features.

Usage (project root)::

    PYTHONPATH=src:. python docs/results/detection_neck_split_2026-12-06/bccd_train_diff.py \
        R_MIN A_PART NECK_RATIO
"""

import sys

sys.argv = [sys.argv[0], *sys.argv[1:4], "none"]
import neck_split as N  # noqa: E402

from napari_ddrnet.segment import segment_wbc  # noqa: E402
from training.bccd import load_fields  # noqa: E402
from training.detection_eval import DetectionCounts  # noqa: E402

BOX = ["min_row", "min_col", "max_row", "max_col"]
for field in load_fields("train"):
    rgb = field.image()
    out = {}
    for on in (False, True):
        N.R_MIN = float(sys.argv[1]) if on else 0.0
        seg = segment_wbc(rgb)
        c = DetectionCounts()
        c.add(seg.cells[BOX].to_numpy(), field.boxes(), None, None)
        out[on] = (len(seg.cells), c.tp, c.fp, c.fn)
    if out[False] != out[True]:
        print(field.image_path.name, field.wbc_class, "shipped", out[False], "split", out[True])
