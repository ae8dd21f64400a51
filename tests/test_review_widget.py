"""The review gallery in a real viewer (run under xvfb-run): keys, sync, undo, autosave."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

if os.environ.get("CI"):
    import napari  # noqa: F401  (CI must fail on a broken napari install, never skip)
else:
    napari = pytest.importorskip("napari")

from qtpy.QtCore import Qt  # noqa: E402

from napari_ddrnet._sample_data import make_sample_smear  # noqa: E402
from napari_ddrnet._widget import DifferentialWidget  # noqa: E402
from napari_ddrnet.classes import CLASS_COLORS, DISPLAY_ORDER  # noqa: E402
from napari_ddrnet.layers import LABELS_NAME, POINTS_NAME, SHAPES_NAME  # noqa: E402
from napari_ddrnet.review import read_review  # noqa: E402


@pytest.fixture(autouse=True)
def user_home(tmp_path, monkeypatch):
    """Reviews of in-memory images go to the user data folder: a fresh one per test."""
    monkeypatch.setenv("NAPARI_DDRNET_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(autouse=True)
def _shared_classifier(classifier, monkeypatch):
    """Every widget reuses the session's classifier (loading one per test costs seconds)."""
    real_init = DifferentialWidget.__init__

    def init(self, viewer):
        real_init(self, viewer)
        self._classifier, self._classifier_key = classifier, ("cpu", self._model.value)

    monkeypatch.setattr(DifferentialWidget, "__init__", init)


def analysed(viewer, qtbot, data=None, meta=None, n_cells=4):
    """Dock the differential widget on the sample (or ``data``, by default under the sample's
    name and scale), run it; ``n_cells`` cells expected (``None``: any)."""
    sample, sample_meta, _ = make_sample_smear()[0]
    layer = viewer.add_image(sample if data is None else data, **(meta or sample_meta))
    widget = DifferentialWidget(viewer)
    viewer.window.add_dock_widget(widget, name="WBC differential")
    widget._image.reset_choices()
    widget._image.value = layer
    widget._device.value = "cpu"
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    assert widget.result is not None
    assert n_cells is None or len(widget.result.cells) == n_cells
    return widget


def gallery_of(widget, qtbot):
    gallery = widget.open_gallery()
    qtbot.waitUntil(lambda: gallery._thumb_worker is None, timeout=30_000)
    return gallery


def rgb_of(hexcol: str) -> list[float]:
    h = hexcol.lstrip("#")
    return [int(h[i:i + 2], 16) / 255 for i in (0, 2, 4)]


def table_row(widget, cls: str) -> dict:
    table = widget._table.value
    rows = {r[0]: dict(zip(table["columns"], r, strict=True)) for r in table["data"]}
    # "12 (40.0 %)" -> 12
    return {k: (int(v.split()[0]) if k in ("model", "reviewed") else v)
            for k, v in rows[cls].items()}


def test_keys_reassign_sync_layers_counts_and_undo(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = analysed(viewer, qtbot)
    gallery = gallery_of(widget, qtbot)
    session = widget.review
    assert gallery.session is session and len(gallery.shown()) == 4
    assert len(gallery._thumbs) == 4  # every cell got its thumbnail
    first = gallery.current_cell()
    assert first == gallery.shown()[0]
    # Selecting a cell centres the camera on it and thickens its box.
    row = session.cells.iloc[session.row_of(first)]
    np.testing.assert_allclose(viewer.camera.center[-2:],
                               [row["centroid_row"] * 0.1, row["centroid_col"] * 0.1])
    widths = viewer.layers[SHAPES_NAME].edge_width
    assert widths[session.row_of(first)] > max(np.delete(widths, session.row_of(first)))
    model = session.class_of(first)
    target = "basophil" if model != "basophil" else "monocyte"
    before = table_row(widget, target)["reviewed"]
    qtbot.keyClick(gallery.list, getattr(Qt.Key, f"Key_{DISPLAY_ORDER.index(target) + 1}"))
    # The session, the three layers' features, colours, text and the counts table follow.
    assert session.class_of(first) == target and session.is_reviewed(first)
    i = session.row_of(first)
    for name in (POINTS_NAME, SHAPES_NAME, LABELS_NAME):
        feats = viewer.layers[name].features
        assert feats["class"][i] == target and feats["model_class"][i] == model
        assert feats["reviewed_class"][i] == target and bool(feats["reviewed"][i])
    pts = viewer.layers[POINTS_NAME]
    np.testing.assert_allclose(pts.face_color[i][:3], rgb_of(CLASS_COLORS[target]), atol=1e-6)
    np.testing.assert_allclose(viewer.layers[SHAPES_NAME].edge_color[i][:3],
                               rgb_of(CLASS_COLORS[target]), atol=1e-6)
    assert pts.text.values[i] == f"{target} \u2713"
    assert table_row(widget, target)["reviewed"] == before + 1
    assert table_row(widget, target)["model"] == before - int(model == target)
    assert gallery.current_cell() == gallery.shown()[1]  # moved on to the next cell
    assert "reviewed 1 / 4" in gallery._info.text()
    # Space confirms the next one; Backspace and Ctrl+Z undo, one level each.
    second = gallery.current_cell()
    qtbot.keyClick(gallery.list, Qt.Key.Key_Space)
    assert session.is_reviewed(second) and session.n_reviewed == 2
    qtbot.keyClick(gallery.list, Qt.Key.Key_Backspace)
    assert not session.is_reviewed(second) and gallery.current_cell() == second
    qtbot.keyClick(gallery.list, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert session.n_reviewed == 0 and session.class_of(first) == model
    assert pts.features["class"][i] == model and pts.text.values[i].startswith(model)
    assert table_row(widget, target)["reviewed"] == before
    # Arrows move through the cells, never onto the class dividers.
    gallery.select(gallery.shown()[0])
    qtbot.keyClick(gallery.list, Qt.Key.Key_Right)
    assert gallery.current_cell() == gallery.shown()[1]
    qtbot.keyClick(gallery.list, Qt.Key.Key_Left)
    assert gallery.current_cell() == gallery.shown()[0]


def test_autosave_survives_closed_viewer_and_restores_same_image_only(
        make_napari_viewer, qtbot, user_home):
    viewer = make_napari_viewer()
    widget = analysed(viewer, qtbot)
    gallery = gallery_of(widget, qtbot)
    cell = gallery.current_cell()
    box = widget.review.cells.iloc[widget.review.row_of(cell)][["min_row", "min_col"]].tolist()
    qtbot.keyClick(gallery.list, Qt.Key.Key_6)  # ig
    path = widget.review.path
    assert path.parent == user_home / "reviews" and path.is_file()
    saved = read_review(path)
    assert saved.loc[saved["cell_id"] == cell, "reviewed_class"].item() == "ig"
    viewer.close()  # no save action: the file is already there

    viewer2 = make_napari_viewer()
    widget2 = analysed(viewer2, qtbot)
    review = widget2.review
    assert review.path == path and review.n_reviewed == 1
    restored = review.cells[review.cells["reviewed"]]
    assert restored[["min_row", "min_col"]].iloc[0].tolist() == box
    assert restored["class"].iloc[0] == "ig"
    assert "Review restored: 1 cells" in widget2._status.value
    assert viewer2.layers[POINTS_NAME].features["reviewed"].sum() == 1
    assert table_row(widget2, "ig")["reviewed"] >= 1

    # Another image with the same layer name: its own file, nothing restored onto it.
    other = make_sample_smear()[0][0].copy()
    other[::7, ::7] = 255
    viewer3 = make_napari_viewer()
    widget3 = analysed(viewer3, qtbot, data=other)
    assert widget3.review.path != path and widget3.review.n_reviewed == 0
    assert "restored" not in widget3._status.value
    assert read_review(path)["reviewed"].sum() == 1  # the first review is untouched


def test_target_mark_all_shown_and_export(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    widget = analysed(viewer, qtbot)
    gallery = gallery_of(widget, qtbot)
    session = widget.review
    n_wbc = int(widget.result.cells["class"].isin(DISPLAY_ORDER[:6]).sum())
    widget._target.value = "first 100 white cells"
    assert session.target == 100
    assert f"NOT reached: only {n_wbc} white cells" in gallery._info.text()
    assert session.counts()["wbc_target"].iloc[0] == 100
    # One class only, then mark all shown: exactly those cells become reviewed (one undo step).
    cls = session.class_of(gallery.shown()[0])
    gallery._queue.setCurrentIndex(gallery._queue.findData(cls))
    shown = gallery.shown()
    assert shown and all(session.class_of(c) == cls for c in shown)
    gallery._all_btn.click()
    assert set(session.cells.loc[session.cells["reviewed"], "cell_id"]) == set(shown)
    gallery._queue.setCurrentIndex(gallery._queue.findData("all"))
    gallery._all_btn.click()
    assert session.n_reviewed == 4 and "reviewed 4 / 4" in gallery._info.text()
    gallery.select(shown[0])
    qtbot.keyClick(gallery.list, Qt.Key.Key_9)  # unidentified
    counts_csv, cells_csv = widget.export_csv(tmp_path / "smear.csv")
    cells = pd.read_csv(cells_csv, keep_default_na=False)
    assert {"model_class", "reviewed_class", "reviewed", "pixel_size_um"} <= set(cells.columns)
    assert cells["reviewed"].astype(str).eq("True").all()
    row = cells.set_index("cell_id").loc[shown[0]]
    assert row["class"] == "unidentified" and row["reviewed_class"] == "unidentified"
    assert row["model_class"] == cls
    counts = pd.read_csv(counts_csv).set_index("class")
    assert counts.at["unidentified", "count"] == counts.at["unidentified", "model_count"] + 1
    assert counts.at[cls, "count"] == counts.at[cls, "model_count"] - 1
    assert counts["n_reviewed"].sum() == 4 and (counts["wbc_target"] == 100).all()


def test_gallery_from_plugin_menu_finds_the_differential(make_napari_viewer, qtbot):
    from napari_ddrnet._review_widget import ReviewWidget

    viewer = make_napari_viewer()
    widget = analysed(viewer, qtbot)
    # What Plugins -> DDRNet WBC differential -> WBC review gallery does (manifest entry).
    _, gallery = viewer.window.add_plugin_dock_widget("napari-ddrnet", "WBC review gallery")
    assert isinstance(gallery, ReviewWidget)
    assert gallery.differential is widget and gallery.session is widget.review
    assert len(gallery.shown()) == 4
    assert widget.open_gallery() is gallery  # the button shows it again, no second gallery
    viewer.window.remove_dock_widget(gallery)  # what the dock's close button does
    assert all(w is not gallery for w in viewer.window.dock_widgets.values())
    assert widget.open_gallery() is gallery  # docked again, state kept
    assert any(w is gallery for w in viewer.window.dock_widgets.values())


def test_adapt_needs_enough_reviewed_cells(make_napari_viewer, qtbot, monkeypatch):
    viewer = make_napari_viewer()
    widget = analysed(viewer, qtbot)
    gallery = gallery_of(widget, qtbot)
    shown = []
    monkeypatch.setattr("napari_ddrnet._review_widget.show_info", shown.append)
    widget.review.confirm(gallery.shown())
    assert gallery.adapt() is None and gallery._adapt_worker is None
    assert shown and "Too few reviewed cells" in shown[0] and "at least 10" in shown[0]


def test_adapt_runs_in_worker_and_refreshes_model_list(make_napari_viewer, qtbot, monkeypatch,
                                                       user_home):
    """The gallery hands the reviewed cells and the in-memory image to adapt_from_cells (a fast
    stand-in here: the real fine-tuning is tested in the adaptation tests) and offers the
    model it wrote."""
    import shutil

    from napari_ddrnet import adapt
    from napari_ddrnet.user_models import user_models_dir
    from napari_ddrnet.weights import DEFAULT_WEIGHTS, metadata_path

    calls = {}

    def fake_adapt(cells, out=None, *, images=None, base_weights=None, single_cell=False,
                   progress=None, **kw):
        calls.update(cells=cells, images=images, base=base_weights, single=single_cell,
                     device=kw.get("device"))
        for i in range(3):
            progress(i + 1, 3)
        path = user_models_dir() / "adapted-test.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DEFAULT_WEIGHTS, path)
        shutil.copy(metadata_path(DEFAULT_WEIGHTS), metadata_path(path))
        return adapt.AdaptReport(path, 3, 1, 0.0, 1.0, {})

    monkeypatch.setattr(adapt, "adapt_from_cells", fake_adapt)
    monkeypatch.setattr(adapt, "MIN_CELLS", 3)
    # The stand-in lives in this process; the real job runs in a spawned one (next test).
    monkeypatch.setattr("napari_ddrnet._review_widget.ADAPT_IN_SUBPROCESS", False)
    viewer = make_napari_viewer()
    widget = analysed(viewer, qtbot)
    gallery = gallery_of(widget, qtbot)
    ids = gallery.shown()
    widget.review.reassign(ids[0], "lymphocyte")
    widget.review.reassign(ids[1], "neutrophil")
    widget.review.reassign(ids[2], "neutrophil")
    worker = gallery.adapt()
    assert worker is not None
    qtbot.waitUntil(lambda: gallery._adapt_worker is None, timeout=30_000)
    cells = calls["cells"]
    assert set(cells.loc[cells["reviewed"], "cell_id"]) == set(ids[:3])
    assert {"image", "pixel_size_um", "min_row", "reviewed_class"} <= set(cells.columns)
    assert calls["images"][widget.review.image_name] is widget.result_data
    assert calls["base"] == widget.weights_used and calls["single"] is False
    assert calls["device"] == widget.device == "cpu"  # the device chosen for the analysis
    assert "0 % before, 100 % after" in gallery._adapt_label.text()
    # The widget's model list now offers it (choices are the weights paths): the shipped
    # default first, then the package's other models, then the user's.
    from napari_ddrnet.weights import WEIGHTS_DIR

    choices = [str(c) for c in widget._model.choices]
    packaged = sorted(str(p) for p in WEIGHTS_DIR.glob("*.safetensors") if str(p) != choices[0])
    assert choices[0] == str(widget.weights_used)
    assert len(packaged) >= 2 and choices[1:-1] == packaged
    assert choices[-1] == str(user_home / "models" / "adapted-test.safetensors")


def test_adapt_runs_in_its_own_process_beside_a_drawn_canvas(make_napari_viewer, qtbot,
                                                             user_home):
    """The real fine-tuning, from the gallery, while napari's canvas is on screen: PyTorch's
    optimiser loads triton's LLVM, which crashed napari's process (segmentation fault) once
    Mesa's OpenGL had loaded its own; it now runs in a spawned process, and the model it writes
    is offered in the Model list and loads."""
    from conftest import pbc_mosaic

    from napari_ddrnet.weights import load_bundle
    from training.paths import has_dataset

    if not has_dataset("pbc"):
        pytest.skip("dataset 'pbc' not found (set DDRNET_DATA)")
    viewer = make_napari_viewer(show=True)
    widget = analysed(viewer, qtbot, pbc_mosaic(), {"rgb": True, "name": "mosaic"}, None)
    ids = widget.review.cells["cell_id"].tolist()
    assert len(ids) >= 16
    for k, cell_id in enumerate(ids[:16]):  # the contract, not the biology
        widget.review.reassign(cell_id, "neutrophil" if k % 2 else "lymphocyte")
    gallery = gallery_of(widget, qtbot)
    gallery.adapt_epochs = 1
    assert gallery.adapt() is not None
    qtbot.waitUntil(lambda: gallery._adapt_worker is None, timeout=300_000)
    report = gallery.adapt_report
    assert report is not None and report.path.is_file(), gallery._adapt_label.text()
    assert str(report.path) in [str(c) for c in widget._model.choices]
    assert load_bundle(report.path).classes == widget.result.classes
    # A failure in the process (here: base weights gone) is reported, and the gallery is free
    # again: a RuntimeError (WeightsError) from the worker used to leave it busy for good.
    gallery.adapt_report = None
    widget.weights_used = str(user_home / "gone.safetensors")
    assert gallery.adapt() is not None
    qtbot.waitUntil(lambda: gallery._adapt_worker is None, timeout=120_000)
    assert gallery.adapt_report is None
    assert "Adaptation failed" in gallery._adapt_label.text()
    assert gallery._adapt_btn.isEnabled()


def test_review_file_beside_the_image_names_it(make_napari_viewer, qtbot, tmp_path):
    """A layer read from a file: the review goes beside it, and names the file, so the CLI's
    `adapt` can re-cut the reviewed cells from the review file."""
    from napari_ddrnet.adapt import reviewed_cells
    from napari_ddrnet.classes import PBC_CLASSES

    viewer = make_napari_viewer()
    sample, meta, _ = make_sample_smear()[0]
    src = tmp_path / "smear.ome.tif"
    meta = {**meta, "metadata": {**meta["metadata"], "source_path": str(src)}}
    layer = viewer.add_image(sample, **meta)
    widget = DifferentialWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._image.reset_choices()
    widget._image.value = layer
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    assert widget.review.path == tmp_path / "smear.review.csv"
    gallery = gallery_of(widget, qtbot)
    qtbot.keyClick(gallery.list, Qt.Key.Key_1)
    saved = read_review(tmp_path / "smear.review.csv")
    assert set(saved["image"]) == {str(src)}
    rows = reviewed_cells(saved, PBC_CLASSES)
    assert len(rows) == 1 and rows["reviewed_class"].item() == "neutrophil"
    assert "smear.ome.tif" in gallery._info.text()


def test_an_unexpected_failure_in_the_adaptation_process_keeps_its_traceback(monkeypatch):
    """The spawned process's traceback comes back with its error (chained as the cause, for
    the log), a user's error (too few cells) without one."""
    import queue as _queue

    from napari_ddrnet import _review_widget, adapt

    def broken(cells, progress=None, **kw):
        return {}["no such key"]

    def too_few(cells, progress=None, **kw):
        raise adapt.AdaptError("too few reviewed cells")

    for fake, want_tb in ((broken, True), (too_few, False)):
        monkeypatch.setattr(adapt, "adapt_from_cells", fake)
        messages = _queue.Queue()
        adapt.run_adapt_job(messages, None, {})
        msg = messages.get_nowait()
        err = _review_widget.child_error(msg)
        if want_tb:
            assert isinstance(err, KeyError)
            assert isinstance(err.__cause__, _review_widget.ChildTraceback)
            assert "in broken" in str(err.__cause__) and "KeyError" in str(err.__cause__)
        else:
            assert isinstance(err, adapt.AdaptError) and err.__cause__ is None
    assert isinstance(_review_widget.child_error(("error", "OSError: gone", "tb")),
                      adapt.AdaptError)
    # what the gallery logs with a traceback: faults, not a user's errors
    from napari_ddrnet.weights import WeightsError

    def chained(err, cause):
        err.__cause__ = cause
        return err

    unexpected = _review_widget._unexpected
    assert not unexpected(chained(adapt.AdaptError("WeightsError: bad"), WeightsError("bad")))
    assert not unexpected(chained(adapt.AdaptError("cannot read image"), OSError("gone")))
    assert unexpected(chained(adapt.AdaptError("KeyError: 'x'"), KeyError("x")))
    assert unexpected(chained(adapt.AdaptError("KeyError: 'x'"),
                              chained(KeyError("x"), _review_widget.ChildTraceback("tb"))))
