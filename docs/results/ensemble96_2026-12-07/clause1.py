"""Fifteenth session, clause 1 of the ensemble rule (docs/cross-source.md, "two 96 px
fine-tunes as an ensemble"): the mean of two packaged classifiers' 8-view TTA probabilities on
PBC ``test`` (live) and BCCD fields end to end, beside each member alone in the same run.

Run from the repository root: ``PYTHONPATH=. .venv/bin/python
docs/results/ensemble96_2026-12-07/clause1.py > docs/results/ensemble96_2026-12-07/clause1.log``
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.accuracy import shipped_on_bccd_fields, shipped_on_pbc
from napari_ddrnet.classify import Classifier

MEMBERS = ("ddrnet_wbc8_v7", "runs/candidates/gen96_round2_s1.safetensors")


class MeanOfTwo:
    """Two classifiers of one crop geometry and class list, their probabilities averaged."""

    def __init__(self, a: Classifier, b: Classifier):
        assert a.classes == b.classes and a.input_size == b.input_size
        assert a.crop_fov_um == b.crop_fov_um
        self.a, self.b = a, b
        self.bundle = a.bundle

    classes = property(lambda self: self.a.classes)
    input_size = property(lambda self: self.a.input_size)
    crop_fov_um = property(lambda self: self.a.crop_fov_um)
    batch_size = property(lambda self: self.a.batch_size)

    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        return (self.a.predict_proba(crops) + self.b.predict_proba(crops)) / 2

    def classify(self, crops, min_confidence=0.5):
        from napari_ddrnet.classify import probabilities_to_table
        return probabilities_to_table(self.predict_proba(crops), self.classes, min_confidence)


def main() -> None:
    a = Classifier(MEMBERS[0], device="cpu", tta=True)
    b = Classifier(MEMBERS[1], device="cpu", tta=True)
    out = {}
    for name, clf in (("v7", a), ("round2_s1", b), ("ensemble", MeanOfTwo(a, b))):
        pbc = shipped_on_pbc(clf)
        bccd = shipped_on_bccd_fields(clf)
        out[name] = {"pbc_test": pbc, "bccd_fields": bccd}
        print(f"{name}: PBC test {100 * pbc['accuracy']:.2f} % (macro-F1 "
              f"{100 * pbc['macro_f1']:.2f} %), BCCD fields "
              f"{round(bccd['accuracy'] * bccd['n'])}/{bccd['n']} "
              f"({100 * bccd['accuracy']:.2f} %) confusions {bccd['confusions']}", flush=True)
    Path(__file__).with_name("clause1.json").write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    sys.exit(main())
