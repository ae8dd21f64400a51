"""Which batch sizes give a crop's probabilities bit-identical to a batch of 64, for a given
``classify.MIN_FORWARD_BATCH`` (single pass, 64 random crops, the default model, CPU).

Usage (project root): ``python docs/results/batching_2026-12-06/batch_sizes.py MIN [MIN ...]``
"""

import sys

import numpy as np

import napari_ddrnet.classify as classify

rng = np.random.default_rng(1)
crops = rng.integers(0, 255, (64, 64, 64, 3), dtype=np.uint8)
for minimum in map(int, sys.argv[1:]):
    classify.MIN_FORWARD_BATCH = minimum
    clf = classify.Classifier(device="cpu", tta=False, batch_size=64)
    full = clf.predict_proba(crops)
    differ = {k: float(np.abs(clf.predict_proba(crops[:k]) - full[:k]).max())
              for k in range(1, 65)}
    print(f"MIN_FORWARD_BATCH {minimum}: sizes that differ from 64:",
          {k: d for k, d in differ.items() if d} or "none")
