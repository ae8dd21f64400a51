"""The dockable napari widget: choose a layer, run in a worker thread, see, review and export
counts."""

from __future__ import annotations

import atexit
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    FloatSpinBox,
    Label,
    PushButton,
    Table,
    create_widget,
)
from napari.layers import Image, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning

from .classes import DEFAULT_MIN_CONFIDENCE, DISPLAY_ORDER
from .devices import DEVICES
from .region import Region, RegionError
from .report import csv_tables, write_csv_atomic
from .review import ReviewSession
from .scale import MAX_PIXEL_SIZE_UM

#: Count targets offered: label -> white cells (``None``: all).
TARGET_CHOICES = {"all white cells": None, "first 100 white cells": 100,
                  "first 200 white cells": 200}
#: What a run analyses (see :meth:`DifferentialWidget.region_for`).
WHOLE, VIEW, SHAPES = "whole image", "current view", "Shapes region"


class DifferentialWidget(Container):
    """Find, classify and count white cells in the chosen image layer.

    Results appear as a Labels layer (masks), a Points layer (centroids, coloured and labelled
    by class) and a Shapes layer (boxes), all carrying the per-cell ``features`` table; the
    counts table shows the differential. Running again replaces those layers.

    Each run opens a :class:`~napari_ddrnet.review.ReviewSession` (:attr:`review`), restored
    from the image's review file when the same pixels were reviewed before; the review gallery
    (**Review cells…**) changes it, and the layers, the counts table and the export follow.
    """

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._image = create_widget(annotation=Image, label="Image")
        self._pixel = FloatSpinBox(label="Pixel size µm (0 = auto)", min=0.0,
                                   max=MAX_PIXEL_SIZE_UM, step=0.001, value=0.0)
        self._device = ComboBox(label="Device", choices=list(DEVICES), value="auto")
        self._conf = FloatSlider(label="Min confidence", min=0.0, max=1.0, step=0.01,
                                 value=DEFAULT_MIN_CONFIDENCE)
        self._single = CheckBox(text="Single-cell image (one centred cell, e.g. an analyser "
                                     "export)", value=False)
        self._model = ComboBox(label="Model", choices=_model_choices)
        self._target = ComboBox(label="Count", choices=list(TARGET_CHOICES),
                                value="all white cells")
        self._analyse = ComboBox(label="Analyse", choices=[WHOLE, VIEW, SHAPES], value=WHOLE)
        # Any Shapes layer but our own boxes: the counting area the user drew.
        self._region_layer = ComboBox(label="Region (Shapes)", choices=self._shapes_choices,
                                      nullable=True)
        self._run_btn = PushButton(text="Run")
        self._cancel_btn = PushButton(text="Cancel", enabled=False)
        self._status = Label(value="Choose an RGB smear image and press Run.")
        self._table = Table(value=_empty_counts())
        self._table.read_only = True
        self._table.native.setMinimumHeight(200)
        self._review_btn = PushButton(text="Review cells…", enabled=False)
        self._export_btn = PushButton(text="Export CSV…", enabled=False)
        self.extend([self._image, self._analyse, self._region_layer, self._pixel, self._model,
                     self._device, self._conf, self._single, self._run_btn, self._cancel_btn,
                     self._status, self._target, self._table, self._review_btn, self._export_btn])
        self._review_btn.changed.connect(self.open_gallery)
        self._target.changed.connect(self._on_target)
        self._run_btn.changed.connect(self.run)
        self._cancel_btn.changed.connect(self.cancel)
        self._export_btn.changed.connect(self._ask_export)
        self._classifier = None
        self._classifier_key = None
        #: The latest runs' cells with the current model, for the label-free check that they
        #: look like the training data (:mod:`napari_ddrnet.shift_score`).
        self._shift_runs = None
        self._shift_weights = None
        #: The latest check (``None`` until enough cells were analysed with this model).
        self.shift_verdict = None
        self._shift_verdict_weights = None
        self._worker = None
        self.result = None
        self.image_name = ""
        #: The review of the latest result (``None`` before a run).
        self.review: ReviewSession | None = None
        #: The image layer and pixel array (full resolution) the latest result came from.
        self.result_layer = None
        self.result_data = None
        #: Weights file and single-cell mode of the latest result (what adaptation starts from).
        self.weights_used: str | None = None
        self.result_single = False
        #: Called with the new :attr:`review` after every run (the gallery rebinds to it).
        self.review_listeners: list[Callable[[ReviewSession | None], None]] = []
        self._highlight: int | None = None
        self._gallery = None
        #: The region the latest result covers, and its label store on disk (if any).
        self.result_region: Region | None = None
        self._label_store = None
        self._pending_store = None

    # -- running -----------------------------------------------------------------------------
    def pixel_size_for(self, layer) -> tuple[float | None, float | None]:
        """``(given, metadata)``: the user's value (0 = none), and the layer's calibration
        (``metadata['pixel_size_um']`` from our reader, else a non-unit scale). The pipeline
        decides between them and the red-cell estimate (:func:`~napari_ddrnet.scale.
        resolve_pixel_size`)."""
        given = float(self._pixel.value) if self._pixel.value > 0 else None
        px = (layer.metadata or {}).get("pixel_size_um")
        if not px:
            scale = float(layer.scale[-2]) if len(layer.scale) >= 2 else 1.0
            px = scale if scale != 1.0 else None
        return given, (float(px) if px else None)

    def run(self):
        """Start the analysis in a worker thread; returns the worker (or ``None``)."""
        layer = self._image.value
        if layer is None:
            self._refuse("No image layer selected: open a smear image first.")
            return None
        if self._worker is not None:
            show_info("An analysis is already running.")
            return None
        data = layer.data[0] if layer.multiscale else layer.data
        if not layer.rgb:
            self._refuse(f"'{layer.name}' is not an RGB image. White-cell detection needs the "
                         "colour of the stain: open the RGB smear image.")
            return None
        from .memory import check_fits, estimate_bytes, return_tile_buffers_to_os
        from .pipeline import count_steps
        from .region import whole_image
        from .weights import card_input_size

        single = bool(self._single.value)
        try:  # a single-cell image is always classified whole
            region = whole_image(data.shape) if single else self.region_for(layer, data)
        except RegionError as exc:
            self._refuse(str(exc))
            return None
        sub = region.slice_of(data)  # a view or a lazy slice: nothing is read yet
        # Label images that do not fit in memory (or of lazy images) go to a zarr pyramid.
        on_disk = not single and not (isinstance(sub, np.ndarray) and _labels_fit(sub))
        if not single:
            # Crop memory follows the chosen model's input size (64, 96 or 112 px packaged).
            refused = check_fits(estimate_bytes(sub, labels_in_memory=not on_disk,
                                                input_size=card_input_size(self._model.value)))
            if refused:
                self._refuse(refused)
                return None
            if on_disk:  # a slide, tile after tile: keep resident memory bounded by a tile
                return_tile_buffers_to_os()
        given, meta_px = self.pixel_size_for(layer)
        device, conf = self._device.value, float(self._conf.value)
        weights = self._model.value
        # Errors are handled by _on_error (a notification), not re-raised as tracebacks.
        steps = 2 if single else count_steps(sub) + 1
        worker = create_worker(self._work_reported, sub, given, meta_px, device, conf, single,
                               weights, region, on_disk,
                               _progress={"total": steps,
                                          "desc": f"WBC differential ({region.description})"},
                               _connect={"errored": self._on_error}, _start_thread=False)
        worker.returned.connect(lambda out: self._show(out[0], layer, data, out[1],
                                                       weights, single, region, out[2]))
        worker.aborted.connect(self._on_cancelled)
        worker.finished.connect(self._finished)
        self._worker = worker
        self._run_btn.enabled = False
        self._cancel_btn.enabled = True
        self._status.value = "Running…"
        worker.start()
        return worker

    def _work_reported(self, *args):
        """:meth:`_work`, with every ``RuntimeError`` (a missing or corrupt model file, PyTorch
        out of memory) re-raised as a ``ValueError``: napari's worker takes a RuntimeError from
        a generator for "worker deleted" and sends no signal, which left "Running…" for good."""
        try:
            return (yield from self._work(*args))
        except RuntimeError as exc:
            raise ValueError(str(exc)) from exc

    def _work(self, data, given, meta_px, device, conf, single, weights=None,
              region: Region | None = None, on_disk: bool = False):
        import hashlib

        from .classify import Classifier
        from .label_store import LabelPyramid
        from .pipeline import iter_analyze
        from .region import cells_kept, restrict_result
        from .review import image_key
        from .shift_score import CropSample, RecentRuns
        from .single_cell import analyze_single_cell

        if self._classifier is None or self._classifier_key != (device, weights):
            self._classifier = Classifier(weights, device=device)
            self._classifier_key = (device, weights)
        if self._shift_runs is None or self._shift_weights != weights:
            self._shift_runs, self._shift_weights = RecentRuns(), weights  # per model
        yield
        sample = None
        if single:
            result = analyze_single_cell(data, given, self._classifier,
                                         pixel_size_metadata=meta_px, min_confidence=conf)
        else:
            # A full-size label image of a whole slide would not fit in memory (int32, 4 bytes
            # a pixel): each tile's labels are written to a zarr pyramid on disk instead.
            store = LabelPyramid(data.shape[:2]) if on_disk else None
            if store is not None:
                _STORES.append(store)
            self._pending_store = store  # removed if the run is cancelled (_on_cancelled)
            # In-memory images keep their crops for the shift check; a slide's could not
            # all stay in memory, so it is checked on a bounded sample of them.
            sample = CropSample() if on_disk else None
            try:
                result = yield from _steps(iter_analyze(data, given, self._classifier,
                                                        pixel_size_metadata=meta_px,
                                                        min_confidence=conf,
                                                        labels_out=store,
                                                        keep_crops=not on_disk,
                                                        crop_sample=sample))
                if region is not None:
                    if sample is not None:  # the region's cells only, like the counts
                        sample.restrict(cells_kept(result.cells, region))
                    result = restrict_result(result, region)
            except BaseException:  # failed or cancelled (GeneratorExit): drop the half store
                if store is not None:
                    store.remove()
                raise
        key = image_key(data)
        if region is not None and not region.whole:  # reviews of regions never mix
            key = hashlib.sha256((key + region.key_suffix()).encode()).hexdigest()
        return result, key, self._check_shift(result, key, sample)

    def _check_shift(self, result, key: str, sample=None):
        """``(verdict, runs)`` of the label-free check for this run (in the worker thread);
        ``sample``: a slide's :class:`~napari_ddrnet.shift_score.CropSample` (it kept no crops)."""
        from .shift_score import shift_verdict

        crops, result.crops = result.crops, None  # sampled here; not kept with the result
        n_cells = None
        if sample is not None:
            crops, n_cells = sample.crops, sample.n_seen
        try:
            pooled, runs, cells = self._shift_runs.add(key, crops, n_cells)
            return shift_verdict(self._classifier.bundle, pooled, n_cells=cells), runs
        except Exception as exc:  # a check that only warns must never cost the run
            show_info(f"The 'unlike the training data' check was skipped: {exc}")
            return None, 0

    def cancel(self):
        """Stop the running analysis at the next tile."""
        if self._worker is not None:
            self._worker.quit()

    def _on_cancelled(self):
        # The worker stops resuming the generator: the half-written masks are no use.
        if self._pending_store is not None:
            self._pending_store.remove()
            self._pending_store = None
        self._status.value = "Cancelled." + self._still_shown()

    def _finished(self):
        self._worker = None
        self._run_btn.enabled = True
        self._cancel_btn.enabled = False

    def _on_error(self, exc: Exception):
        self._status.value = f"Failed: {exc}{self._still_shown()}"
        show_error(f"WBC differential failed: {exc}")

    def _refuse(self, message: str) -> None:
        """A run refused before it starts: the status says so too (not the previous run's)."""
        self._status.value = message + self._still_shown()
        show_error(message)

    def _still_shown(self) -> str:
        """What the status adds while an earlier result stays on screen after a failed,
        refused or cancelled run (its layers, table and Export still belong to that image)."""
        return (f" (The results shown are still those of '{self.image_name}'.)"
                if self.result is not None and self.image_name else "")

    # -- results -----------------------------------------------------------------------------
    def _show(self, result, layer, data=None, key: str = "", weights: str | None = None,
              single: bool = False, region: Region | None = None,
              shift: tuple | None = None):
        from .layers import OUR_LAYERS, layer_data
        from .region import whole_image
        from .review import default_review_path

        region = region or whole_image(layer.data[0].shape if layer.multiscale
                                       else layer.data.shape)
        if layer not in self._viewer.layers:  # removed while the analysis ran
            store, self._pending_store = self._pending_store, None
            if store is not None:
                store.remove()
            if self._shift_runs is not None:  # nor may its cells weigh in later checks
                self._shift_runs.discard(key)
            self._status.value = (f"'{layer.name}' was removed during the analysis: its "
                                  f"result is not shown.{self._still_shown()}")
            show_info(f"napari-ddrnet: '{layer.name}' was removed during the analysis; its "
                      "result was dropped.")
            return
        self._pending_store = None
        self.image_name = layer.name  # the shown result's: Export proposes its name
        self.result = result
        self.result_region = region
        self.result_layer, self.result_data = layer, data
        self.weights_used, self.result_single = weights, single
        src = source_path(layer)
        # The file path, when there is one, names the image in the review file and the CSVs
        # (as the CLI does), so `napari-ddrnet adapt` can re-cut the reviewed cells from them.
        review = ReviewSession(result.cells, result.classes, image_name=src or layer.name,
                               key=key, path=default_review_path(layer.name, key, src),
                               pixel_size_um=result.pixel_size_um, model=self.model_name)
        restored = review.restore()
        review.target = TARGET_CHOICES[self._target.value]
        review.listeners.append(self._on_review_change)
        self.review = review
        self._highlight = None
        scale = tuple(layer.scale[-2:])
        translate = tuple(layer.translate[-2:])
        for name in OUR_LAYERS:  # re-run: replace, never pile up copies or keep stale masks
            if name in self._viewer.layers:
                self._viewer.layers.remove(name)
        if self._label_store is not None:  # the replaced masks' store on disk
            self._label_store.remove()
        self._label_store = None if isinstance(result.labels, np.ndarray) else result.labels
        units = tuple(layer.units[-2:]) if hasattr(layer, "units") else None
        for ldata, meta, kind in layer_data(result, scale, translate, review.cells,
                                            labels_offset=region.offset, units=units):
            getattr(self._viewer, f"add_{kind}")(ldata, **meta)
        self._viewer.layers.selection.active = layer
        self._refresh_table()
        where = "" if single else f" in the {region.description}"
        n = len(result.cells)
        status = (f"{n} {'cell' if n == 1 else 'cells'}{where}; pixel size "
                  f"{pixel_size_text(result.pixel_size)}; model {self.model_name}.")
        if single and n and int(result.cells["nucleus_area_px"].iloc[0]) == 0:
            status += " No cell was found: the whole image was classified as one."
        if self._label_store is not None:
            status += " Masks kept on disk and drawn lazily (a multiscale zarr pyramid)."
        if restored:
            status += f" Review restored: {restored} cells from {review.path}."
        if not single and region.whole:
            from .single_cell import looks_like_single_cell

            if looks_like_single_cell(layer.data.shape if not layer.multiscale
                                      else layer.data[0].shape, result.cells):
                # Only a hint, worded as one: a small field whose one white cell is large
                # and central (as in BCCD fields) reads the same by this measure.
                status += (" If this image is one cell exported by an analyser, tick "
                           "'Single-cell image' to classify it whole.")
        verdict, runs = shift or (None, 0)
        # Notify when the verdict turns to a warning, not at every run of the same lab; a new
        # model starts afresh.
        warned_before = (self.shift_verdict is not None and self.shift_verdict.warns
                         and self._shift_verdict_weights == weights)
        self.shift_verdict, self._shift_verdict_weights = verdict, weights
        if verdict is not None and verdict.warns:
            advice = (" Review a few cells per class (Review cells…) and use Adapt to my "
                      "lab… before trusting the counts.")
            subject = (f"the {verdict.n_cells} cells of this run" if runs <= 1 else
                       f"the {verdict.n_cells} cells of this run and the {runs - 1} before it")
            text = verdict.summary(subject) + advice
            status += " Warning: " + text
            if not warned_before:
                show_warning("napari-ddrnet: " + text)
        self._status.value = status
        self._export_btn.enabled = True
        self._review_btn.enabled = True
        for fn in list(self.review_listeners):
            fn(review)

    # -- regions -----------------------------------------------------------------------------
    def _shapes_choices(self, _widget=None) -> list[tuple[str, Shapes]]:
        from .layers import SHAPES_NAME

        return [(lyr.name, lyr) for lyr in self._viewer.layers
                if isinstance(lyr, Shapes) and lyr.name != SHAPES_NAME]

    def region_for(self, layer, data) -> Region:
        """The part of ``layer`` (full-resolution ``data``) the chosen "Analyse" option covers:
        the whole image, the canvas's visible extent, or the bounding box of the chosen Shapes
        layer's rectangles, polygons and ellipses (only cells whose centroid is inside one of
        them are kept). Coordinates go through world space, so differently scaled or
        translated layers line up as napari draws them.

        Raises
        ------
        RegionError
            No Shapes layer or area shape, or a region that misses the image.
        """
        from .region import box_region, polygon_region, shape_polygon, view_box, whole_image

        choice = self._analyse.value
        if choice == WHOLE:
            return whole_image(data.shape)
        if choice == VIEW:
            cam = self._viewer.camera
            lo, hi = view_box(cam.center, cam.zoom, self._viewer.canvas.size)
            a, b = self._world_to_pixels(layer, np.array([lo, hi]))
            region = box_region(a, b, data.shape, "current view")
            r0, c0, r1, c1 = region.box
            return Region(region.box, description=f"current view (rows {r0}-{r1}, "
                                                  f"cols {c0}-{c1})")
        shapes = self._region_layer.value
        if shapes is None:
            raise RegionError("No counting area: add a Shapes layer, draw a rectangle or "
                              "polygon around the area to count, and choose it as 'Region'.")
        polys = []
        for verts, kind in zip(shapes.data, shapes.shape_type, strict=True):
            outline = shape_polygon(verts, kind)
            if outline is None:  # lines and paths enclose nothing
                continue
            full = np.tile(np.asarray(verts, float)[0], (len(outline), 1))
            full[:, -2:] = outline
            world = np.array([shapes.data_to_world(v) for v in full])
            polys.append(self._world_to_pixels(layer, world))
        n = len(polys)
        return polygon_region(polys, data.shape,
                              f"Shapes region '{shapes.name}' ({n} shape{'s' * (n != 1)})")

    def _world_to_pixels(self, layer, world: np.ndarray) -> np.ndarray:
        """World points (last two axes: rows, cols) as ``layer``'s full-resolution pixels."""
        point = np.asarray(self._viewer.dims.point, float)
        out = []
        for w in np.atleast_2d(world):
            pos = point.copy()
            pos[-2:] = w[-2:]
            out.append(np.asarray(layer.world_to_data(pos), float)[-2:])
        return np.array(out)

    # -- review ------------------------------------------------------------------------------
    def _review_layers(self) -> dict:
        from .layers import OUR_LAYERS

        return {n: self._viewer.layers[n] for n in OUR_LAYERS if n in self._viewer.layers}

    def _on_review_change(self, cell_ids: list[int]) -> None:
        from .layers import features_table, update_review

        review = self.review
        if review is None:
            return
        update_review(self._review_layers(), features_table(self.result, review.cells),
                      self._highlight)
        self._refresh_table()
        if review.last_save_error:
            show_error(f"Could not save the review: {review.last_save_error}")

    def highlight(self, cell_id: int | None) -> None:
        """Thicken ``cell_id``'s box and point (the gallery's current cell); ``None``: none."""
        from .layers import set_highlight

        if self.review is None:
            return
        self._highlight = None if cell_id is None else self.review.row_of(cell_id)
        set_highlight(self._review_layers(), len(self.review.cells), self._highlight)

    def _on_target(self, label: str) -> None:
        if self.review is not None:
            self.review.target = TARGET_CHOICES[label]
            self._refresh_table()
            for fn in list(self.review.listeners):
                fn([])

    def _refresh_table(self) -> None:
        if self.review is not None:
            self._table.value = _review_counts_for_table(self.review.counts())

    def open_gallery(self):
        """Dock the review gallery beside this widget (or show it again); returns it."""
        from qtpy.QtWidgets import QDockWidget

        from ._review_widget import ReviewWidget

        gallery = self._gallery
        if gallery is not None:
            try:
                gallery.isVisible()
            except RuntimeError:  # its Qt object was deleted
                gallery = None
        if gallery is not None and any(w is gallery
                                       for w in self._viewer.window.dock_widgets.values()):
            dock = gallery.parent()
            while dock is not None and not isinstance(dock, QDockWidget):
                dock = dock.parent()
            if dock is not None:
                dock.show()
                dock.raise_()
            return gallery
        # Closing a dock only un-parents the gallery (napari keeps the widget): dock it again,
        # with its view and current cell as they were.
        gallery = gallery or ReviewWidget(self._viewer, differential=self)
        self._viewer.window.add_dock_widget(gallery, name="WBC review gallery", area="right",
                                            tabify=False)
        self._gallery = gallery
        return gallery

    @property
    def model_name(self) -> str:
        """The name of the model the latest result was classified with (its card's name)."""
        clf = self._classifier
        return clf.bundle.name if clf is not None else ""

    @property
    def device(self) -> str:
        """The device chosen in the widget: for the analysis, and for adapting the model from
        the review (a GPU when there is one on ``auto``)."""
        return str(self._device.value)

    # -- export ------------------------------------------------------------------------------
    def export_csv(self, path: str | Path) -> tuple[Path, Path]:
        """Write the counts to ``path`` and the per-cell table to ``<stem>_cells.csv``.

        Both carry the review: each cell's current, model and reviewed class; the counts after
        review beside the model's (docs/csv-formats.md), over the chosen count target.
        """
        if self.result is None:
            raise RuntimeError("Nothing to export yet: run the analysis first.")
        path = Path(path)
        review = self.review or ReviewSession(self.result.cells, self.result.classes,
                                              image_name=self.image_name)
        cells, counts = csv_tables(review.image_name, review.cells, review.counts(),
                                   self.result.classes, self.result.pixel_size_um,
                                   self.result.pixel_size_source,
                                   self.review.model if self.review else self.model_name)
        cells_path = path.with_name(path.stem + "_cells.csv")
        write_csv_atomic(counts, path)
        write_csv_atomic(cells, cells_path)
        return path, cells_path

    def _ask_export(self):
        from qtpy.QtWidgets import QFileDialog

        fname, _ = QFileDialog.getSaveFileName(self.native, "Export differential",
                                               f"{self.image_name}_counts.csv", "CSV (*.csv)")
        if fname:
            try:
                counts, cells = self.export_csv(fname)
                show_info(f"Saved {counts.name} and {cells.name}")
            except OSError as exc:
                show_error(f"Could not save CSV: {exc}")


_SOURCE_TEXT = {"given": "as entered", "metadata": "from the file",
                "estimated": "estimated from red cells",
                "default": "DEFAULT: could not be measured, enter it for correct crops"}


def source_path(layer) -> str | None:
    """The file an image layer was read from: napari's ``source.path``, else our reader's
    ``metadata['source_path']``; ``None`` for arrays made in memory."""
    path = getattr(getattr(layer, "source", None), "path", None)
    return path or (layer.metadata or {}).get("source_path") or None


def _model_choices(_widget=None) -> list[tuple[str, str]]:
    """(name, weights path) of the models offered: the shipped one first, then the user's
    adapted models (:func:`napari_ddrnet.user_models.list_models`), re-read on refresh."""
    from .user_models import list_models

    return [(m.name, str(m.path)) for m in list_models()]


def pixel_size_text(px) -> str:
    """How the status line reports a :class:`~napari_ddrnet.scale.PixelSize`."""
    text = f"{px.um:.3f} µm ({_SOURCE_TEXT.get(px.source, px.source)})"
    return f"{text}; {px.note}" if px.note else text


#: Largest image whose full-size label image the widget builds in memory (int32: 1 GB at this
#: size); larger and lazy images get a :class:`~napari_ddrnet.label_store.LabelPyramid`.
MAX_LABEL_PIXELS = 256 * 10**6


def _labels_fit(data) -> bool:
    """Whether a full-size int32 label image of ``data`` stays within :data:`MAX_LABEL_PIXELS`."""
    return int(data.shape[0]) * int(data.shape[1]) <= MAX_LABEL_PIXELS


#: Label stores made by this process; deleted when it exits (they are a cache, not results).
_STORES: list = []


@atexit.register
def _remove_stores() -> None:
    for store in _STORES:
        store.remove()


def _steps(gen):
    """Re-yield the pipeline's steps (one napari progress tick each) and return its result."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
        yield


def _empty_counts() -> dict:
    n = len(DISPLAY_ORDER)
    return {"class": list(DISPLAY_ORDER), "model": ["0"] * n, "reviewed": ["0"] * n,
            "basis": [""] * n}


def _count_text(counts, percents) -> list[str]:
    """``"12 (40.0 %)"``: absolute count and percent in one cell, so the table fits a dock."""
    return [f"{int(k)}" if np.isnan(p) else f"{int(k)} ({p:.1f} %)"
            for k, p in zip(counts, percents, strict=True)]


def _review_counts_for_table(counts: pd.DataFrame) -> dict:
    """The model's differential beside the one after review (reviewed class where a person
    set one, else the model's), each as count and percent."""
    return {"class": counts["class"].tolist(),
            "model": _count_text(counts["model_count"], counts["model_percent"]),
            "reviewed": _count_text(counts["count"], counts["percent"]),
            "basis": counts["basis"].tolist()}
