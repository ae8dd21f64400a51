"""How many epochs tests/test_adapt.py's whole-run AdaBN test needs with the 96 px default.

The test's own draw (LISC, rng seed 3: 40 held-out cell groups, one crop per group of the rest,
5 reviewed per class, the others unreviewed), adapted with ``unreviewed=True`` for several
epoch counts; accuracy on the held-out groups (5-class, single pass). Unlike the test, no row
points at a missing image. Run from the repo root:

    PYTHONPATH=. .venv/bin/python docs/results/v7_default/adapt_epochs_probe.py \
        > docs/results/v7_default/adapt_epochs_probe.log

Optional arguments: the models (comma-separated) and the epoch counts, e.g. ``ddrnet_wbc8_v8,
ddrnet_wbc8_v7 40,80,120`` (the seventeenth session's run for the 112 px default,
``docs/results/v8_default/adapt_epochs_probe.log``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from napari_ddrnet.adapt import adapt_from_cells, cut_crops, predict_proba
from napari_ddrnet.weights import load_bundle
from training.paths import data_root

LISC_CLASSES = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")


def accuracy(bundle, crops: np.ndarray, present: list[int], y: np.ndarray) -> float:
    """5-class accuracy of ``bundle`` on ``crops`` (single pass)."""
    p = predict_proba(bundle.model, crops, bundle.mean, bundle.std, tta=False)
    return float((np.asarray(present)[p[:, present].argmax(1)] == y).mean())


def main(weights: list[str], epochs: list[int]) -> None:
    torch.set_num_threads(2)
    root = data_root() / "lisc"
    lab = pd.read_csv(root / "labels.csv")
    groups = np.random.default_rng(3).permutation(lab["cell_group"].unique())
    test_groups, run_groups = set(groups[:40]), groups[40:]
    run = lab[lab["cell_group"].isin(run_groups)].groupby("cell_group").head(1)
    reviewed = run.groupby("class").head(5).index
    cells = pd.DataFrame({"image": [str(root / f) for f in run["file"]],
                          "reviewed_class": np.where(run.index.isin(reviewed), run["class"], ""),
                          "cell_group": run["cell_group"]})
    test = lab[lab["cell_group"].isin(test_groups)]
    for name in weights:
        base = load_bundle(name)
        crops = cut_crops(pd.DataFrame({"image": [str(root / f) for f in test["file"]]}),
                          base.input_size, base.crop_fov_um, single_cell=True)
        present = [base.classes.index(c) for c in LISC_CLASSES]
        y = np.array([base.classes.index(c) for c in test["class"]])
        before = accuracy(base, crops, present, y)
        print(f"{name} base {before:.3f}", flush=True)
        for ep in epochs:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "lab.safetensors"
                adapt_from_cells(cells, out, base_weights=name, single_cell=True, holdout=0,
                                 epochs=ep, seed=0, unreviewed=True)
                acc = accuracy(load_bundle(out), crops, present, y)
            print(f"{name} epochs {ep}: {acc:.3f} (gain {acc - before:+.3f})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1].split(",") if len(sys.argv) > 1 else ["ddrnet_wbc8_v7", "ddrnet_wbc8_v6"],
         [int(e) for e in sys.argv[2].split(",")] if len(sys.argv) > 2 else [20, 40, 80])
