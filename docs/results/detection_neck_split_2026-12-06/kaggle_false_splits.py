"""The Kaggle TEST crops that change when the neck split (depth 3.75 µm, ratio 0.4, as it was
tried in ``segment._split_touching_nuclei``) is on: the 8 fields, the estimated pixel size, and
the depth, area and roundness of the parts (also for the two true merges, the BCCD ``train``
eosinophil at 3.5 µm, and the development merge at its RBC-box pixel size).
``kaggle_false_splits.log`` was written before the red-cell ruler's black-fill fix (the
estimates 0.21-0.26 µm/px), ``kaggle_false_splits_after_scale_fix.log`` after it.

Usage (project root)::

    PYTHONPATH=src:.:docs/results/detection_neck_split_2026-12-06 \
        python docs/results/detection_neck_split_2026-12-06/kaggle_false_splits.py
"""

import glob

import numpy as np
import tried_split as T
from skimage import io, measure

import napari_ddrnet.segment as S
from training.bccd import load_fields
from training.detection_eval import load_txl_fields
from training.paths import data_root

shipped_merge = T.merge_wide_necks


def report(parts, dist, ratio):
    out = shipped_merge(parts, dist, ratio)
    if len(np.unique(out[out > 0])) > 1:
        for rp in measure.regionprops(out):
            print(f"   part depth {dist[out == rp.label].max() / 4:.2f} area {rp.area / 16:.0f}"
                  f" solidity {rp.solidity:.3f} ecc {rp.eccentricity:.3f}")
    return out


T.merge_wide_necks = report
T.install(3.75, 0.4)
root = data_root() / "kaggle_blood_cells"
for name in ["TEST/EOSINOPHIL/_10_1367.jpeg", "TEST/NEUTROPHIL/_0_9976.jpeg",
             "TEST/NEUTROPHIL/_14_1995.jpeg", "TEST/NEUTROPHIL/_20_2603.jpeg",
             "TEST/NEUTROPHIL/_21_2245.jpeg", "TEST/NEUTROPHIL/_29_1043.jpeg",
             "TEST/NEUTROPHIL/_42_779.jpeg", "TEST/NEUTROPHIL/_9_9946.jpeg"]:
    rgb = io.imread(glob.glob(str(root / "**" / name), recursive=True)[0])[..., :3]
    seg = S.segment_wbc(rgb)
    print("kaggle", name, f"pixel size {seg.pixel_size_um:.3f}", "cells", len(seg.cells))
pair = next(f for f in load_txl_fields("dev", sources=("bccd",)) if f.image.startswith("ad6d3274"))
print("TXL-PBC dev BCCD ad6d3274 (two cells)", len(S.segment_wbc(pair.rgb()).cells))
print("TXL-PBC held BCD (the field with two touching cells)")
for f in load_txl_fields("held", sources=("bcd",)):
    S.segment_wbc(f.rgb())
eos = next(f for f in load_fields("train") if f.name == "BloodImage_00359")
T.install(3.5, 0.4)
print("BCCD train BloodImage_00359 eosinophil at 3.5 µm", len(S.segment_wbc(eos.image()).cells))
T.install(3.0, 0.4)  # shallow enough to print the parts at the smaller, RBC-box scale
print(f"TXL-PBC dev BCCD ad6d3274 at its RBC-box pixel size {pair.rbc_pixel_size():.4f} "
      "(split depth 3.0 µm here, only to print the depths)")
S.segment_wbc(pair.rgb(), pair.rbc_pixel_size())
