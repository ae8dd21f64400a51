"""Detection with the tried neck split on (``tried_split.install``): tp/fp/fn per TXL-PBC
source and part (estimated pixel size, all fields) and BCCD ``train`` / ``test``.

Usage (project root)::

    PYTHONPATH=src:.:docs/results/detection_neck_split_2026-12-06 \
        python docs/results/detection_neck_split_2026-12-06/detection_tried.py DEPTH RATIO
"""

import sys

import tried_split as T

from benchmarks.detection import bccd_rows, txl_rows
from napari_ddrnet.segment import SegmentationParams

T.install(float(sys.argv[1]), float(sys.argv[2]))
for r in txl_rows(["dev", "held"], SegmentationParams()):
    if r["pixel_size"] == "estimated" and r["fields_set"] == "all":
        print(r["part"], r["source"], r["tp"], r["fp"], r["fn"], r["recall"], r["precision"],
              flush=True)
for r in bccd_rows(["train", "test"], SegmentationParams()):
    if r["class"] == "all":
        print("bccd", r["split"], r["tp"], r["fp"], r["fn"], flush=True)
