"""Whole slides in the viewer: lazy multiscale masks, counting regions, the memory check.

Needs a display (run under xvfb-run). Images stay small (<= 2400 x 2400) so this is fast.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from conftest import needs_data, pbc_mosaic

if os.environ.get("CI"):
    import napari  # noqa: F401  (CI must fail on a broken napari install, never skip)
else:
    napari = pytest.importorskip("napari")

da = pytest.importorskip("dask.array")

from test_widget import _dock, _run  # noqa: E402

from napari_ddrnet._widget import SHAPES, VIEW  # noqa: E402
from napari_ddrnet.layers import LABELS_NAME, OUR_LAYERS, POINTS_NAME  # noqa: E402
from napari_ddrnet.region import inside_polygons  # noqa: E402
from napari_ddrnet.synthetic import synthetic_smear  # noqa: E402

KINDS = ("neutrophil", "lymphocyte", "monocyte", "eosinophil") * 3
PX = 0.1


@pytest.fixture(autouse=True)
def _own_user_folder(tmp_path, monkeypatch):
    """Reviews and label stores go to a per-test folder, never the developer's own."""
    monkeypatch.setenv("NAPARI_DDRNET_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def field():
    image, truth = synthetic_smear((2000, 2000), PX, wbc_kinds=KINDS, seed=11)
    return image, truth


def _stores(tmp_path) -> list:
    root = tmp_path / "home" / "cache" / "labels"
    return sorted(root.glob("*.zarr")) if root.is_dir() else []


def _status_text(layer, world) -> str:
    status = layer.get_status(world, world=True)
    return status["coordinates"] if isinstance(status, dict) else str(status)


def test_lazy_multiscale_image_gets_lazy_multiscale_masks(make_napari_viewer, qtbot, field,
                                                          tmp_path):
    image, truth = field
    levels = [da.from_array(image[::f, ::f], chunks=(512, 512, 3)) for f in (1, 2, 4)]
    viewer = make_napari_viewer()
    layer = viewer.add_image(levels, rgb=True, multiscale=True, name="slide",
                             scale=(PX, PX))
    widget = _dock(viewer, layer)
    _run(widget, qtbot)
    res = widget.result
    assert len(res.cells) == len(truth)
    masks = viewer.layers[LABELS_NAME]
    # Lazy and multiscale: napari holds dask arrays over the zarr store, never a numpy image.
    assert masks.multiscale and len(masks.data) >= 2
    assert not isinstance(masks.data[0], np.ndarray) and masks.data[0].shape == (2000, 2000)
    assert "on disk" in widget._status.value and len(_stores(tmp_path)) == 1
    full = masks.data[0]
    for row in res.cells.itertuples():
        r, c = int(round(row.centroid_row)), int(round(row.centroid_col))
        assert int(full[r, c].compute()) == row.cell_id
        # napari maps the label value to its features row through the `index` column.
        world = (row.centroid_row * PX, row.centroid_col * PX)
        text = _status_text(masks, world)
        assert f"cell_id: {row.cell_id}," in text, (row.cell_id, text)
    # A re-run replaces the masks and deletes the old store.
    _run(widget, qtbot)
    assert len(_stores(tmp_path)) == 1


def _whole_then_region(viewer, widget, qtbot):
    _run(widget, qtbot)
    whole = widget.result.cells.copy()
    return whole


def test_shapes_region_counts_only_cells_inside(make_napari_viewer, qtbot, field, tmp_path):
    image, truth = field
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, rgb=True, name="field", scale=(PX, PX))
    widget = _dock(viewer, layer)
    whole = _whole_then_region(viewer, widget, qtbot)
    # A triangle over part of the field, drawn in world units (µm) as a user would.
    tri_px = np.array([[100, 100], [100, 1900], [1500, 300]], float)
    shapes = viewer.add_shapes([tri_px * PX], shape_type="polygon", name="area")
    widget.reset_choices()
    widget._analyse.value = SHAPES
    widget._region_layer.value = shapes
    inside = inside_polygons(whole[["centroid_row", "centroid_col"]].to_numpy(), [tri_px])
    assert 0 < inside.sum() < len(whole)
    _run(widget, qtbot)
    res = widget.result
    assert len(res.cells) == int(inside.sum())
    expect = whole[inside][["centroid_row", "centroid_col"]].to_numpy()
    got = res.cells[["centroid_row", "centroid_col"]].to_numpy()
    order = np.lexsort(expect.T[::-1]), np.lexsort(got.T[::-1])
    np.testing.assert_allclose(got[order[1]], expect[order[0]], atol=2.0)
    assert res.cells["cell_id"].tolist() == list(range(1, len(res.cells) + 1))
    assert "Shapes region 'area'" in widget._status.value
    # In-memory image: masks stay a numpy array, covering the region's box, placed on it.
    masks = viewer.layers[LABELS_NAME]
    assert isinstance(masks.data, np.ndarray) and not _stores(tmp_path)
    r0, c0 = widget.result_region.offset
    np.testing.assert_allclose(masks.translate, (r0 * PX, c0 * PX))
    assert set(np.unique(masks.data)) - {0} == set(res.cells["cell_id"])
    for row in res.cells.itertuples():
        world = (row.centroid_row * PX, row.centroid_col * PX)
        for name in (LABELS_NAME, POINTS_NAME):
            text = _status_text(viewer.layers[name], world)
            assert f"cell_id: {row.cell_id}," in text, (name, row.cell_id, text)
    # The export holds the region's cells only.
    counts_csv, cells_csv = widget.export_csv(tmp_path / "area.csv")
    assert pd.read_csv(counts_csv)["count"].sum() == len(res.cells)
    assert len(pd.read_csv(cells_csv)) == len(res.cells)


def test_current_view_region(make_napari_viewer, qtbot, field):
    image, _ = field
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, rgb=True, name="field", scale=(PX, PX))
    widget = _dock(viewer, layer)
    widget._analyse.value = VIEW
    # Look at the top-left quarter of the field.
    viewer.camera.center = (50.0, 50.0)
    h, w = viewer.canvas.size
    viewer.camera.zoom = max(h, w) / 100.0
    _run(widget, qtbot)
    r0, c0, r1, c1 = widget.result_region.box
    half = np.array([h, w]) / 2 / viewer.camera.zoom / PX  # view half-size, pixels
    assert r0 == max(0, int(np.floor(500 - half[0] + 0.5)))
    assert (r1 - r0) * (c1 - c0) < 2000 * 2000
    cells = widget.result.cells
    assert len(cells)
    assert cells["centroid_row"].between(r0, r1).all()
    assert cells["centroid_col"].between(c0, c1).all()
    assert "current view (rows" in widget._status.value


def test_shapes_region_without_layer_is_a_clear_error(make_napari_viewer, monkeypatch, field):
    image, _ = field
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, rgb=True, name="field")
    widget = _dock(viewer, layer)
    widget._analyse.value = SHAPES
    shown = []
    monkeypatch.setattr("napari_ddrnet._widget.show_error", shown.append)
    assert widget.run() is None
    assert shown and "Shapes layer" in shown[0]


def test_memory_refusal_notifies_and_adds_nothing(make_napari_viewer, monkeypatch, field):
    image, _ = field
    viewer = make_napari_viewer()
    layer = viewer.add_image(da.from_array(image, chunks=(500, 500, 3)), rgb=True,
                             name="slide")
    widget = _dock(viewer, layer)
    monkeypatch.setattr("napari_ddrnet.memory.available_bytes", lambda: 64 * 2**20)
    shown = []
    monkeypatch.setattr("napari_ddrnet._widget.show_error", shown.append)
    n_layers = len(viewer.layers)
    assert widget.run() is None
    assert shown and "Not started" in shown[0] and "Shapes region" in shown[0]
    assert len(viewer.layers) == n_layers
    assert not any(name in viewer.layers for name in OUR_LAYERS)
    assert widget._run_btn.enabled and widget._worker is None


def test_pyramidal_ome_tiff_opens_lazily_and_is_analysed(make_napari_viewer, qtbot, field):
    """The plugin's reader opens a pyramidal OME-TIFF as a lazy multiscale image with its
    pixel size; the widget analyses the full-resolution level and keeps the masks lazy."""
    tifffile = pytest.importorskip("tifffile")
    from napari_ddrnet._reader import read_smear

    image, truth = field
    path = os.path.join(os.environ["NAPARI_DDRNET_HOME"], "slide.ome.tif")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    opts = {"tile": (256, 256), "photometric": "rgb"}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(image, subifds=2, metadata={"axes": "YXS", "PhysicalSizeX": PX,
                                             "PhysicalSizeXUnit": "µm", "PhysicalSizeY": PX,
                                             "PhysicalSizeYUnit": "µm"}, **opts)
        tw.write(image[::2, ::2], subfiletype=1, **opts)
        tw.write(image[::4, ::4], subfiletype=1, **opts)
    viewer = make_napari_viewer()
    (data, meta, kind), = read_smear(path)
    layer = viewer.add_image(data, **meta)
    assert layer.multiscale and layer.rgb and len(layer.data) == 3
    assert not isinstance(layer.data[0], np.ndarray) and layer.data[0].shape == image.shape
    assert layer.metadata["pixel_size_um"] == pytest.approx(PX)
    widget = _dock(viewer, layer)
    _run(widget, qtbot)
    assert widget.result.pixel_size_source == "metadata"
    assert len(widget.result.cells) == len(truth)
    masks = viewer.layers[LABELS_NAME]
    assert masks.multiscale and not isinstance(masks.data[0], np.ndarray)


@needs_data("pbc")
def test_slide_run_is_checked_on_a_sample_of_its_crops(make_napari_viewer, qtbot,
                                                        monkeypatch):
    """A lazy slide keeps no crops, so the "unlike the training data" check runs on the
    bounded sample taken while it is classified: 36 real PBC cells as a slide do not warn,
    the same slide with a strong cyan cast does (and the verdict counts every cell)."""
    shown: list[str] = []
    monkeypatch.setattr("napari_ddrnet._widget.show_warning", shown.append)
    viewer = make_napari_viewer()
    verdicts = {}
    for name, gains in (("plain", (1.0, 1.0, 1.0)), ("cyan", (0.6, 1.0, 1.0))):
        mosaic = pbc_mosaic(gains)
        levels = [da.from_array(mosaic[::f, ::f], chunks=(256, 256, 3)) for f in (1, 2)]
        layer = viewer.add_image(levels, rgb=True, multiscale=True, name=name)
        widget = _dock(viewer, layer)
        _run(widget, qtbot)
        assert "on disk" in widget._status.value  # the slide path, not an in-memory one
        assert widget.result.crops is None and len(widget.result.cells) >= 32
        verdicts[name] = widget.shift_verdict
        assert verdicts[name] is not None
        assert verdicts[name].n_cells == len(widget.result.cells)
    assert not verdicts["plain"].warns
    assert verdicts["cyan"].warns and len(shown) == 1
    # A polygon region of the cast slide: its box is the whole slide, but only the cells inside
    # count, for the verdict as for the counts (too few alone: pooled with the run before).
    n_before = len(widget.result.cells)
    side = widget.result_layer.data[0].shape[0]
    tri = np.array([[0, 0], [0, side - 1], [side - 1, 0]], float)
    shapes = viewer.add_shapes([tri], shape_type="polygon", name="area")
    widget.reset_choices()
    widget._analyse.value = SHAPES
    widget._region_layer.value = shapes
    _run(widget, qtbot)
    n_region = len(widget.result.cells)
    assert 0 < n_region < n_before
    assert widget.shift_verdict.n_cells == n_region + n_before
