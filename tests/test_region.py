"""Counting regions, the label pyramid on disk and the memory check (Qt-free)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_ddrnet.label_store import LabelPyramid, level_shapes
from napari_ddrnet.memory import check_fits, estimate_bytes
from napari_ddrnet.pipeline import AnalysisResult
from napari_ddrnet.region import (
    RegionError,
    box_region,
    inside_polygons,
    offset_cells,
    polygon_region,
    restrict_result,
    shape_polygon,
    view_box,
    whole_image,
)
from napari_ddrnet.report import counts_table
from napari_ddrnet.scale import PixelSize


def test_box_region_covers_touched_pixels_and_clips():
    # Pixel k spans k-0.5..k+0.5: a box from -3 to 9.2 covers pixels 0..9, clipped at 0.
    reg = box_region((-3.0, 2.4), (9.2, 5.6), (100, 100))
    assert reg.box == (0, 2, 10, 7) and reg.shape == (10, 5) and not reg.whole
    with pytest.raises(RegionError):
        box_region((200, 200), (300, 300), (100, 100))
    assert whole_image((50, 60, 3)).box == (0, 0, 50, 60)


def test_polygon_region_and_containment():
    tri = np.array([[10, 10], [10, 60], [60, 10]], float)
    reg = polygon_region([tri], (100, 100))
    assert reg.box == (10, 10, 61, 61)
    inside = inside_polygons([[20, 20], [55, 55], [5, 5]], reg.polygons)
    assert inside.tolist() == [True, False, False]
    with pytest.raises(RegionError):
        polygon_region([np.array([[0, 0], [5, 5]])], (100, 100))  # a line encloses nothing


def test_shape_polygon_ellipse_from_bounding_corners():
    corners = np.array([[0, 0], [0, 20], [10, 20], [10, 0]], float)  # napari's ellipse data
    poly = shape_polygon(corners, "ellipse")
    assert poly.min(axis=0) == pytest.approx([0, 0], abs=0.1)
    assert poly.max(axis=0) == pytest.approx([10, 20], abs=0.1)
    assert inside_polygons([[5, 10], [0.5, 0.5]], [poly]).tolist() == [True, False]
    assert shape_polygon(corners[:2], "line") is None


def test_view_box():
    lo, hi = view_box((0, 50.0, 80.0), 2.0, (100, 200))
    assert lo.tolist() == [25.0, 30.0] and hi.tolist() == [75.0, 130.0]


def _result(labels):
    cells = pd.DataFrame({"cell_id": [1, 2, 3], "centroid_row": [5.0, 5.0, 15.0],
                          "centroid_col": [5.0, 15.0, 15.0], "min_row": [3, 3, 13],
                          "min_col": [3, 13, 13], "max_row": [8, 8, 18], "max_col": [8, 18, 18],
                          "class": ["lymphocyte", "neutrophil", "lymphocyte"]})
    return AnalysisResult(cells, counts_table(cells["class"]), labels,
                          PixelSize(0.1, "given"), ("lymphocyte", "neutrophil"))


def _labels():
    lab = np.zeros((20, 20), np.int32)
    lab[3:8, 3:8], lab[3:8, 13:18], lab[13:18, 13:18] = 1, 2, 3
    return lab


def test_restrict_result_offsets_filters_and_relabels():
    # A box at (100, 200) of the image; the polygon holds cells 1 and 3 (not 2).
    poly = np.array([[100, 200], [100, 212], [110, 212], [110, 220], [120, 220], [120, 200]],
                    float)
    reg = polygon_region([poly], (1000, 1000))
    reg = type(reg)((100, 200, 120, 220), reg.polygons, "test")
    out = restrict_result(_result(_labels()), reg)
    assert out.cells["cell_id"].tolist() == [1, 2]
    assert out.cells["centroid_row"].tolist() == [105.0, 115.0]
    assert out.cells["min_col"].tolist() == [203, 213]
    assert out.counts.set_index("class")["count"]["lymphocyte"] == 2
    assert out.labels[15, 15] == 2 and out.labels[5, 15] == 0 and out.labels[5, 5] == 1
    shifted = offset_cells(_result(None).cells, 10, 20)
    assert shifted["max_row"].tolist() == [18, 18, 28]


def test_label_pyramid_writes_levels_and_relabels(tmp_path):
    assert level_shapes((2400, 1000), 512) == [(2400, 1000), (1200, 500), (600, 250),
                                               (300, 125)]
    lab = np.random.default_rng(0).integers(0, 5, (700, 900)).astype(np.int32)
    store = LabelPyramid(lab.shape, tmp_path / "l.zarr", chunk=128, min_side=200)
    # Overlapping writes, as the tiler does: the last write of a pixel wins everywhere.
    store[0:400, 0:500] = lab[0:400, 0:500]
    store[333:700, 257:900] = lab[333:700, 257:900]
    store[0:400, 0:500] = lab[0:400, 0:500]
    store[0:351, 499:900] = lab[0:351, 499:900]
    store[390:700, 0:260] = lab[390:700, 0:260]
    np.testing.assert_array_equal(np.asarray(store[:, :]), lab)
    for k, level in enumerate(store.dask_levels()):
        np.testing.assert_array_equal(level.compute(), lab[::2**k, ::2**k])
    store.relabel(np.array([0, 0, 7, 3, 4]))
    assert set(np.unique(store.levels[2][:, :])) <= {0, 3, 4, 7}
    assert np.asarray(store[:, :])[lab == 1].max() == 0
    store.remove()
    assert not (tmp_path / "l.zarr").exists()


def test_memory_estimate_and_refusal():
    import dask.array as da

    slide = da.zeros((100_000, 60_000, 3), np.uint8, chunks=(4096, 4096, 3))
    lazy = estimate_bytes(slide, labels_in_memory=False)
    assert sum(lazy.values()) < 2**30  # bounded by the tile, not the slide
    big = estimate_bytes(slide, labels_in_memory=True)
    assert big["labels"] == 100_000 * 60_000 * 4
    # One batch of the shipped model's crops (112 px), or of the model named (64 px v6).
    assert lazy["crops"] == 64 * 112 * 112 * 3 * 33
    assert estimate_bytes(slide, labels_in_memory=False, input_size=64)["crops"] == (
        64 * 64 * 64 * 3 * 33)
    msg = check_fits(big, available=8 * 2**30)
    assert msg and "Shapes region" in msg and "labels" in msg
    assert check_fits(lazy, available=8 * 2**30) is None


def test_tile_buffers_returned_to_os_is_idempotent():
    import sys

    from napari_ddrnet.memory import return_tile_buffers_to_os

    first = return_tile_buffers_to_os()
    assert return_tile_buffers_to_os() == first
    if sys.platform.startswith("linux"):
        assert isinstance(first, bool)
