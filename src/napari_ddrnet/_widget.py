"""The dockable napari widget: choose a layer, run in a worker thread, see and export counts."""

from __future__ import annotations

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
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info

from .classes import DISPLAY_ORDER
from .devices import DEVICES
from .report import csv_tables, write_csv_atomic


class DifferentialWidget(Container):
    """Find, classify and count white cells in the chosen image layer.

    Results appear as a Labels layer (masks), a Points layer (centroids, coloured and labelled
    by class) and a Shapes layer (boxes), all carrying the per-cell ``features`` table; the
    counts table shows the differential. Running again replaces those layers.
    """

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._image = create_widget(annotation=Image, label="Image")
        self._pixel = FloatSpinBox(label="Pixel size µm (0 = auto)", min=0.0, max=50.0,
                                   step=0.001, value=0.0)
        self._device = ComboBox(label="Device", choices=list(DEVICES), value="auto")
        self._conf = FloatSlider(label="Min confidence", min=0.0, max=1.0, step=0.01, value=0.5)
        self._single = CheckBox(text="Single-cell image (one centred cell, e.g. an analyser "
                                     "export)", value=False)
        self._run_btn = PushButton(text="Run")
        self._cancel_btn = PushButton(text="Cancel", enabled=False)
        self._status = Label(value="Choose an RGB smear image and press Run.")
        self._table = Table(value=_empty_counts())
        self._table.read_only = True
        self._export_btn = PushButton(text="Export CSV…", enabled=False)
        self.extend([self._image, self._pixel, self._device, self._conf, self._single,
                     self._run_btn,
                     self._cancel_btn, self._status, self._table, self._export_btn])
        self._run_btn.changed.connect(self.run)
        self._cancel_btn.changed.connect(self.cancel)
        self._export_btn.changed.connect(self._ask_export)
        self._classifier = None
        self._classifier_device = None
        self._worker = None
        self.result = None
        self.image_name = ""

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
            show_error("No image layer selected: open a smear image first.")
            return None
        if self._worker is not None:
            show_info("An analysis is already running.")
            return None
        data = layer.data[0] if layer.multiscale else layer.data
        if not layer.rgb:
            show_error(f"'{layer.name}' is not an RGB image. White-cell detection needs the "
                       "colour of the stain: open the RGB smear image.")
            return None
        from .pipeline import count_steps

        given, meta_px = self.pixel_size_for(layer)
        device, conf = self._device.value, float(self._conf.value)
        self.image_name = layer.name
        # Errors are handled by _on_error (a notification), not re-raised as tracebacks.
        single = bool(self._single.value)
        steps = 2 if single else count_steps(data) + 1
        worker = create_worker(self._work, data, given, meta_px, device, conf, single,
                               _progress={"total": steps,
                                          "desc": "WBC differential"},
                               _connect={"errored": self._on_error}, _start_thread=False)
        worker.returned.connect(lambda res: self._show(res, layer))
        worker.aborted.connect(lambda: self._status.set_value("Cancelled."))
        worker.finished.connect(self._finished)
        self._worker = worker
        self._run_btn.enabled = False
        self._cancel_btn.enabled = True
        self._status.value = "Running…"
        worker.start()
        return worker

    def _work(self, data, given, meta_px, device, conf, single):
        from .classify import Classifier
        from .pipeline import iter_analyze
        from .single_cell import analyze_single_cell

        if self._classifier is None or self._classifier_device != device:
            self._classifier = Classifier(device=device)
            self._classifier_device = device
        yield
        if single:
            return analyze_single_cell(np.asarray(data), given, self._classifier,
                                       pixel_size_metadata=meta_px, min_confidence=conf)
        return (yield from _steps(iter_analyze(data, given, self._classifier,
                                               pixel_size_metadata=meta_px,
                                               min_confidence=conf)))

    def cancel(self):
        """Stop the running analysis at the next tile."""
        if self._worker is not None:
            self._worker.quit()

    def _finished(self):
        self._worker = None
        self._run_btn.enabled = True
        self._cancel_btn.enabled = False

    def _on_error(self, exc: Exception):
        self._status.value = f"Failed: {exc}"
        show_error(f"WBC differential failed: {exc}")

    # -- results -----------------------------------------------------------------------------
    def _show(self, result, layer):
        from .layers import OUR_LAYERS, layer_data

        self.result = result
        scale = tuple(layer.scale[-2:])
        translate = tuple(layer.translate[-2:])
        for name in OUR_LAYERS:  # re-run: replace, never pile up copies or keep stale masks
            if name in self._viewer.layers:
                self._viewer.layers.remove(name)
        for data, meta, kind in layer_data(result, scale, translate):
            getattr(self._viewer, f"add_{kind}")(data, **meta)
        self._viewer.layers.selection.active = layer
        self._table.value = _counts_for_table(result.counts)
        status = f"{len(result.cells)} cells; pixel size {pixel_size_text(result.pixel_size)}."
        if not self._single.value:
            from .single_cell import looks_like_single_cell

            if looks_like_single_cell(layer.data.shape if not layer.multiscale
                                      else layer.data[0].shape, result.cells):
                status += (" This looks like a single-cell export: tick 'Single-cell image' "
                           "to classify it whole.")
        self._status.value = status
        self._export_btn.enabled = True

    def export_csv(self, path: str | Path) -> tuple[Path, Path]:
        """Write the counts to ``path`` and the per-cell table to ``<stem>_cells.csv``."""
        if self.result is None:
            raise RuntimeError("Nothing to export yet: run the analysis first.")
        path = Path(path)
        cells, counts = csv_tables(self.image_name, self.result.cells, self.result.counts,
                                   self.result.classes, self.result.pixel_size_um)
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


def pixel_size_text(px) -> str:
    """How the status line reports a :class:`~napari_ddrnet.scale.PixelSize`."""
    text = f"{px.um:.3f} µm ({_SOURCE_TEXT.get(px.source, px.source)})"
    return f"{text}; {px.note}" if px.note else text


def _steps(gen):
    """Re-yield the pipeline's steps (one napari progress tick each) and return its result."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
        yield


def _empty_counts() -> dict:
    return {"class": list(DISPLAY_ORDER), "count": [0] * len(DISPLAY_ORDER),
            "percent": [""] * len(DISPLAY_ORDER), "basis": [""] * len(DISPLAY_ORDER)}


def _counts_for_table(counts: pd.DataFrame) -> dict:
    pct = [("" if np.isnan(p) else f"{p:.1f}") for p in counts["percent"]]
    return {"class": counts["class"].tolist(), "count": counts["count"].astype(int).tolist(),
            "percent": pct, "basis": counts["basis"].tolist()}
