"""The napari widget driven through a real viewer (needs a display: run under xvfb-run)."""

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

from napari_ddrnet._sample_data import make_sample_smear  # noqa: E402
from napari_ddrnet._widget import DifferentialWidget  # noqa: E402
from napari_ddrnet.classes import CLASS_COLORS  # noqa: E402
from napari_ddrnet.layers import LABELS_NAME, POINTS_NAME, SHAPES_NAME  # noqa: E402


@pytest.fixture(autouse=True)
def _own_user_folder(tmp_path, monkeypatch):
    """Runs look for a saved review in the user data folder: never the developer's own (a
    review of the sample made in napari would be restored into these tests)."""
    monkeypatch.setenv("NAPARI_DDRNET_HOME", str(tmp_path / "home"))


def _wait(widget, qtbot, timeout=120_000):
    # The widget's own `finished` handler (connected before the worker starts) clears
    # `_worker`; waiting on that cannot miss a signal emitted before we start waiting.
    qtbot.waitUntil(lambda: widget._worker is None, timeout=timeout)


def _dock(viewer, layer):
    """The differential widget docked in ``viewer``, set to ``layer`` on the CPU."""
    widget = DifferentialWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._image.reset_choices()
    widget._image.value = layer
    widget._device.value = "cpu"
    return widget


def _run(widget, qtbot):
    worker = widget.run()
    assert worker is not None
    _wait(widget, qtbot)
    return worker


@pytest.fixture
def docked(make_napari_viewer):
    viewer = make_napari_viewer()
    data, meta, _ = make_sample_smear()[0]
    layer = viewer.add_image(data, **meta)
    widget = DifferentialWidget(viewer)
    viewer.window.add_dock_widget(widget, name="WBC differential")
    widget._image.reset_choices()
    widget._image.value = layer
    widget._device.value = "cpu"
    return viewer, widget, layer


def test_widget_runs_on_sample_and_adds_layers(docked, qtbot, tmp_path):
    viewer, widget, layer = docked
    _run(widget, qtbot)
    res = widget.result
    # The sample layer carries its calibration, so the pixel size is the file's, not a guess.
    assert res is not None and res.pixel_size_source == "metadata"
    assert res.pixel_size_um == pytest.approx(0.1)
    assert "from the file" in widget._status.value
    truth = pd.DataFrame(layer.metadata["truth"])
    assert len(res.cells) == len(truth) == 4
    for name in (LABELS_NAME, POINTS_NAME, SHAPES_NAME):
        assert name in viewer.layers
        feats = viewer.layers[name].features
        assert list(feats["cell_id"]) == list(res.cells["cell_id"])
        assert {"class", "confidence", "area_um2", "touches_border"} <= set(feats.columns)
    pts = viewer.layers[POINTS_NAME]
    # Points sit on the cells (data in pixels, layer scaled like the image) and are coloured
    # with the documented colour of their class.
    assert pts.scale[0] == pytest.approx(0.1)
    for cls, face in zip(pts.features["class"], pts.face_color, strict=True):
        hexcol = CLASS_COLORS[cls].lstrip("#")
        expect = [int(hexcol[i:i + 2], 16) / 255 for i in (0, 2, 4)]
        np.testing.assert_allclose(face[:3], expect, atol=1e-6)
    labels = viewer.layers[LABELS_NAME].data
    assert set(np.unique(labels)) - {0} == set(res.cells["cell_id"])
    # The counts table shows the differential.
    table = widget._table.value
    assert list(table["columns"]) == ["class", "model", "reviewed", "basis"]
    counts = {row[0]: int(row[1].split()[0]) for row in table["data"]}
    assert sum(counts.values()) == 4
    assert all(row[1] == row[2] for row in table["data"])  # nothing reviewed yet
    # Export writes both CSVs.
    counts_csv, cells_csv = widget.export_csv(tmp_path / "smear.csv")
    df = pd.read_csv(counts_csv)
    assert df["count"].sum() == 4 and set(df["image"]) == {layer.name}
    cells = pd.read_csv(cells_csv)
    assert len(cells) == 4 and cells["pixel_size_um"].tolist() == pytest.approx([0.1] * 4)
    assert set(cells["model"]) == {widget.model_name} and widget.model_name
    assert set(cells["crop_mode"]) == {"field"}


def test_hover_shows_the_cell_under_the_cursor(docked, qtbot):
    """What napari shows on hover: every layer must name the cell under the cursor."""
    viewer, widget, _ = docked
    _run(widget, qtbot)
    res = widget.result
    for row in res.cells.itertuples():
        world = (row.centroid_row * 0.1, row.centroid_col * 0.1)
        for name in (LABELS_NAME, POINTS_NAME):
            status = viewer.layers[name].get_status(world, world=True)
            text = status["coordinates"] if isinstance(status, dict) else str(status)
            assert f"cell_id: {row.cell_id}," in text, (name, row.cell_id, text)
        # napari's Shapes status names the box index only: it must be this cell's row.
        boxes = viewer.layers[SHAPES_NAME]
        index = boxes.get_value(world, world=True)[0]
        assert boxes.features["cell_id"][index] == row.cell_id


def test_rerun_replaces_layers(docked, qtbot):
    viewer, widget, _ = docked
    _run(widget, qtbot)
    n_layers = len(viewer.layers)
    widget._conf.value = 0.99  # everything becomes 'unidentified'
    _run(widget, qtbot)
    assert len(viewer.layers) == n_layers
    assert set(viewer.layers[POINTS_NAME].features["class"]) == {"unidentified"}


def test_whole_slide_masks_do_not_go_to_memory():
    """A full-size int32 label image is only built in memory when it fits (1 GB at the limit);
    larger ones are written to a zarr pyramid on disk (tests/test_slide_widget.py)."""
    da = pytest.importorskip("dask.array")
    from napari_ddrnet._widget import MAX_LABEL_PIXELS, _labels_fit

    assert _labels_fit(np.zeros((480, 640, 3), np.uint8))
    slide = da.zeros((100_000, 60_000, 3), dtype=np.uint8, chunks=(4096, 4096, 3))
    assert not _labels_fit(slide) and MAX_LABEL_PIXELS * 4 <= 2**30


def test_single_cell_mode_is_proposed_then_gives_one_row(make_napari_viewer, qtbot, smear):
    """A single-cell export analysed as a field: the status proposes the single-cell mode."""
    image, truth = smear
    r, c = int(truth["centroid_row"][0]), int(truth["centroid_col"][0])
    cell = np.pad(image, ((150, 150), (150, 150), (0, 0)), mode="reflect")[r:r + 300, c:c + 300]
    viewer = make_napari_viewer()
    layer = viewer.add_image(cell, rgb=True, name="export", scale=(0.1, 0.1))
    widget = _dock(viewer, layer)
    _run(widget, qtbot)
    assert "If this image is one cell exported by an analyser" in widget._status.value
    assert LABELS_NAME in viewer.layers
    widget._single.value = True
    _run(widget, qtbot)
    assert len(widget.result.cells) == 1
    assert LABELS_NAME not in viewer.layers  # no stale masks from the field run
    assert len(viewer.layers[POINTS_NAME].data) == 1
    assert "looks like" not in widget._status.value


def test_grayscale_layer_gives_clear_error(make_napari_viewer, monkeypatch):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((64, 64), np.uint8), name="gray")
    widget = DifferentialWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._image.reset_choices()
    widget._image.value = layer
    shown = []
    monkeypatch.setattr("napari_ddrnet._widget.show_error", shown.append)
    assert widget.run() is None
    assert shown and "not an RGB image" in shown[0]


def test_worker_error_is_notified(docked, qtbot, monkeypatch):
    viewer, widget, layer = docked
    layer.data = np.zeros_like(layer.data)  # an empty (black) field: no cells, no crash
    _run(widget, qtbot)
    assert widget.result is not None and len(widget.result.cells) == 0
    shown = []
    monkeypatch.setattr("napari_ddrnet._widget.show_error", shown.append)
    widget._device.value = "cuda"  # absent here: the worker fails with a clear message
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    widget._classifier = None
    widget.run()
    _wait(widget, qtbot, 60_000)
    assert shown and "cuda" in shown[0]
    assert widget._run_btn.enabled


def test_cancel_stops_between_tiles(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    """Cancel pressed (GUI thread) while the first tile is being segmented: that tile ends,
    no further tile starts, nothing is added and the half-written masks on disk are deleted."""
    import threading
    import time

    da = pytest.importorskip("dask.array")
    from napari_ddrnet import pipeline
    from napari_ddrnet.pipeline import count_steps
    from napari_ddrnet.synthetic import synthetic_smear

    viewer = make_napari_viewer()
    image, _ = synthetic_smear((2400, 2400), 0.1, wbc_kinds=("lymphocyte",) * 6, seed=4)
    data = da.from_array(image, chunks=(600, 600, 3))
    layer = viewer.add_image(data, rgb=True, name="big", scale=(0.1, 0.1))
    widget = _dock(viewer, layer)
    started, release = [], threading.Event()
    real = pipeline.segment_wbc

    def slow_segment(*args, **kwargs):  # the real segmentation, held until Cancel is pressed
        started.append(time.perf_counter())
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "segment_wbc", slow_segment)
    widget.run()
    qtbot.waitUntil(lambda: len(started) == 1, timeout=60_000)
    widget.cancel()  # mid-tile, from the GUI thread, as the Cancel button does
    release.set()
    _wait(widget, qtbot)
    n_tiles = count_steps(data) - 1
    assert n_tiles >= 2 and len(started) == 1, (len(started), n_tiles)
    assert widget.result is None
    assert POINTS_NAME not in viewer.layers
    assert widget._status.value == "Cancelled." and widget._run_btn.enabled
    # A lazy image's masks go to a zarr store in the cache: cancelling removes it.
    assert not list((tmp_path / "home" / "cache" / "labels").glob("*.zarr"))


@needs_data("pbc")
def test_run_warns_once_when_cells_look_unlike_the_training_data(make_napari_viewer, qtbot,
                                                                 monkeypatch):
    """36 real PBC cells: as they are, no warning; with a strong cyan cast (red x 0.6) the
    label-free check warns in the status and once as a notification; the clean image
    analysed again after it does not warn (a run of >= 32 cells is judged alone)."""
    shown: list[str] = []
    monkeypatch.setattr("napari_ddrnet._widget.show_warning", shown.append)
    viewer = make_napari_viewer()
    plain = viewer.add_image(pbc_mosaic(), name="plain", rgb=True)
    cast = viewer.add_image(pbc_mosaic((0.6, 1.0, 1.0)), name="cyan", rgb=True)
    widget = _dock(viewer, plain)

    def run_on(layer):
        widget._image.reset_choices()
        widget._image.value = layer
        _run(widget, qtbot)
        assert widget.result.crops is None  # sampled for the check, not kept

    run_on(plain)
    assert len(widget.result.cells) >= 32
    assert widget.shift_verdict is not None and not widget.shift_verdict.warns
    assert "Warning" not in widget._status.value and not shown
    for _ in range(2):  # the same lab again: no second notification
        run_on(cast)
        assert widget.shift_verdict.warns
        assert "cells of this run look unlike the images" in widget._status.value
    assert len(shown) == 1 and "Adapt to my lab" in shown[0]
    run_on(plain)
    assert not widget.shift_verdict.warns and "Warning" not in widget._status.value


def test_a_model_that_cannot_load_fails_the_run_cleanly(docked, qtbot, monkeypatch):
    """A deleted or corrupt model file raises a RuntimeError (WeightsError) in the worker:
    napari's generator worker would send no signal for it, leaving 'Running…' for good."""
    from napari_ddrnet import classify
    from napari_ddrnet.weights import WeightsError

    viewer, widget, layer = docked

    def broken(self, *a, **k):
        raise WeightsError("weights file not found: gone.safetensors")

    monkeypatch.setattr(classify.Classifier, "__init__", broken)
    widget._classifier = None
    shown = []
    monkeypatch.setattr("napari_ddrnet._widget.show_error", shown.append)
    widget.run()
    _wait(widget, qtbot, 60_000)
    assert shown and "gone.safetensors" in shown[0]
    assert widget._status.value.startswith("Failed:") and widget._run_btn.enabled


def test_results_stay_named_after_their_own_image(make_napari_viewer, qtbot, monkeypatch,
                                                  tmp_path):
    """After a failed or refused run the earlier result stays on screen: the status says whose
    it is and Export proposes its image's name, not the new one's; a layer removed while its
    run is in flight drops that result instead of a traceback and a stuck 'Running…'. Result
    layers take the image's units (µm from a calibrated file), and the status names the
    model."""
    viewer = make_napari_viewer()
    data, meta, _ = make_sample_smear()[0]
    smear = viewer.add_image(data, **meta)
    widget = _dock(viewer, smear)
    _run(widget, qtbot)
    assert f"model {widget._classifier.bundle.meta['name']}" in widget._status.value
    for name in ("WBC masks", "WBC classes", "WBC boxes"):
        if name in viewer.layers and hasattr(smear, "units"):
            assert tuple(viewer.layers[name].units) == tuple(smear.units)
    shown = []
    monkeypatch.setattr("napari_ddrnet._widget.show_error", shown.append)
    grey = np.repeat(np.asarray(data).mean(-1, keepdims=True), 3, -1).astype(np.uint8)
    widget._image.reset_choices()
    widget._image.value = viewer.add_image(grey, rgb=True, name="grey copy")
    _run(widget, qtbot)  # fails in the worker: no colour
    assert shown and "no colour" in shown[-1]
    assert f"still those of '{smear.name}'" in widget._status.value
    asked = []

    def dialog(parent, title, proposed, filt):
        asked.append(proposed)
        return "", ""

    monkeypatch.setattr("qtpy.QtWidgets.QFileDialog.getSaveFileName", dialog)
    widget._ask_export()
    assert asked == [f"{smear.name}_counts.csv"]
    widget._image.value = viewer.add_image(np.zeros((32, 32), np.uint8), name="flat")
    assert widget.run() is None  # refused before it starts: the status says so too
    assert "not an RGB image" in widget._status.value
    widget._image.value = smear
    worker = widget.run()
    assert worker is not None
    viewer.layers.remove(smear)  # while its run is in flight
    _wait(widget, qtbot)
    assert "was removed during the analysis" in widget._status.value
    assert "Running" not in widget._status.value and widget._run_btn.enabled
    # The dropped run's cells are not pooled into a later run's "unlike the training" check.
    from napari_ddrnet.review import image_key

    assert image_key(data) not in widget._shift_runs
