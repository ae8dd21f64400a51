"""Accuracy regression: the shipped model's accuracy computed live, never read from a JSON.

The weights card records the model's test accuracy; these tests recompute it from the dataset
images with the plugin's own crop and classifier code, so a silent change to cropping,
normalisation or the weights (or a card that lies) fails here.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import needs_data

from napari_ddrnet.classify import Classifier


@needs_data("pbc")
def test_shipped_model_on_pbc_test_matches_its_card():
    from benchmarks.accuracy import pbc_test_crops

    clf = Classifier(device="cpu", tta=False)
    crops, names = pbc_test_crops(clf.input_size)
    pred = np.asarray(clf.classes)[clf.predict_proba(crops).argmax(1)]
    acc = float((pred == names).mean())
    assert len(names) == 3415
    # The card's live figure (written by training.export from benchmarks/accuracy.py: same
    # images, same code) must be what we measure here, and never below the floor we ship at.
    live = clf.bundle.meta["metrics_live"]["pbc_test_single_pass"]
    assert acc == pytest.approx(live["accuracy"], abs=0.002)
    assert acc >= 0.94


@needs_data("bccd")
def test_shipped_model_on_bccd_test_fields_end_to_end():
    """Segment, crop and classify each BCCD test field; a missed cell counts as wrong."""
    from benchmarks.accuracy import shipped_on_bccd_fields

    res = shipped_on_bccd_fields(Classifier(device="cpu", tta=True))
    assert res["n"] == 69
    assert res["accuracy"] >= 0.75, res["confusions"]
