"""Segmentation: synthetic smears with known positions and the real BCCD fields."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import needs_data

from napari_ddrnet.segment import CELL_COLUMNS, segment_wbc
from napari_ddrnet.synthetic import synthetic_smear


def _match(truth, cells, tol_px):
    d = np.hypot(truth["centroid_row"].to_numpy()[:, None] - cells["centroid_row"].to_numpy(),
                 truth["centroid_col"].to_numpy()[:, None] - cells["centroid_col"].to_numpy())
    return d.min(axis=1) <= tol_px


@pytest.mark.parametrize(("px", "shape"), [(0.1, (480, 640)), (0.45, (240, 320))])
def test_finds_every_synthetic_wbc_at_two_magnifications(px, shape):
    # 0.1 µm/px: a WBC is ~120 px across; 0.45 µm/px: ~27 px (low magnification).
    image, truth = synthetic_smear(shape, px, seed=3)
    seg = segment_wbc(image, px)
    assert list(seg.cells.columns) == CELL_COLUMNS
    assert len(seg.cells) == len(truth) == 4
    assert _match(truth, seg.cells, tol_px=2.0 / px).all()  # within 2 µm
    assert set(np.unique(seg.labels)) - {0} == set(seg.cells["cell_id"])
    assert (seg.nuclei > 0).sum() < (seg.labels > 0).sum()


def test_lobes_of_a_neutrophil_are_one_cell():
    image, truth = synthetic_smear(wbc_kinds=("neutrophil",) * 3, seed=5)
    seg = segment_wbc(image, 0.1)
    assert len(seg.cells) == 3


def test_touching_white_cells_are_split():
    from napari_ddrnet.synthetic import synthetic_smear as make

    a, _ = make((300, 300), 0.1, wbc_kinds=("lymphocyte",), rbc_density=0, n_platelets=0, seed=1)
    # Two lymphocytes side by side, cytoplasm touching: paste the same cell shifted by 9 µm.
    img = np.full((300, 400, 3), a[0, 0], np.uint8)
    seg1 = segment_wbc(a, 0.1)
    r, c = seg1.cells[["centroid_row", "centroid_col"]].iloc[0].astype(int)
    patch = a[r - 50:r + 50, c - 50:c + 50]
    img[100:200, 100:200] = patch
    img[100:200, 190:290] = np.minimum(img[100:200, 190:290], patch)
    seg = segment_wbc(img, 0.1)
    assert len(seg.cells) == 2


def test_border_cells_are_kept_and_flagged(smear):
    image, truth = smear
    cut = image[:, 180:]  # cuts through the cells near the left edge
    seg = segment_wbc(cut, 0.1)
    assert seg.cells["touches_border"].any()
    assert not seg.cells.loc[seg.cells["min_col"] > 0, "touches_border"].all()


def test_empty_and_uniform_fields_give_empty_results():
    for image in (np.full((200, 300, 3), 230, np.uint8), np.zeros((200, 300, 3), np.uint8)):
        seg = segment_wbc(image)
        assert len(seg.cells) == 0 and seg.labels.max() == 0
        assert list(seg.cells.columns) == CELL_COLUMNS


@needs_data("bccd")
def test_bccd_test_fields_recall_precision_dice():
    """WBC recall >= 0.95 and precision >= 0.90 at IoU >= 0.5 on the BCCD test fields."""
    from training.bccd import load_fields
    from training.detection_eval import DetectionCounts

    counts = DetectionCounts()
    for field in load_fields("test"):
        seg = segment_wbc(field.image())
        boxes = seg.cells[["min_row", "min_col", "max_row", "max_col"]].to_numpy()
        counts.add(boxes, field.boxes(), seg.nuclei > 0, field.nucleus_mask())
    assert counts.n_fields == 69
    assert counts.recall >= 0.95, counts.as_dict()
    assert counts.precision >= 0.90, counts.as_dict()
    assert counts.mean_dice >= 0.70, counts.as_dict()
