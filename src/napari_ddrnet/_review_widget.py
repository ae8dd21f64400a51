"""The review gallery: page through the cells by class, move the wrong ones, sign off.

A dock widget bound to the :class:`~napari_ddrnet._widget.DifferentialWidget`'s latest
:class:`~napari_ddrnet.review.ReviewSession`. Thumbnails are cut in a worker thread; every change
goes through the session (which autosaves) and the differential widget refreshes the layers
and the counts table.

Keys (with the gallery focused): ``1``–``9`` move the current cell to that class (clinical
order of the counts table) and go to the next cell; Space/Enter confirms it; arrows move;
Backspace or Ctrl+Z undo (several levels).

**Adapt to my lab…** fine-tunes the model used for the run on this image's reviewed cells
(:func:`napari_ddrnet.adapt.adapt_from_cells`) in a worker thread and adds the result to the
differential widget's model list.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from pathlib import Path

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent, QObject, QSize, Qt
from qtpy.QtGui import QColor, QIcon, QImage, QPainter, QPen, QPixmap
from qtpy.QtWidgets import (
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .classes import DISPLAY_ORDER, class_color
from .review import QUEUE_ALL, QUEUE_UNCERTAIN, UNCERTAIN_MARGIN, ReviewSession

THUMB = 88  # thumbnail side, screen pixels
_CELL_ROLE = Qt.ItemDataRole.UserRole
_KEY_CLASS = {getattr(Qt.Key, f"Key_{i + 1}"): c for i, c in enumerate(DISPLAY_ORDER[:9])}
_PLAIN_KEYS = (Qt.Key.Key_Backspace, Qt.Key.Key_Space, Qt.Key.Key_Return, Qt.Key.Key_Enter,
               Qt.Key.Key_Left, Qt.Key.Key_Right, Qt.Key.Key_Up, Qt.Key.Key_Down)
_BATCH = 24  # thumbnails per worker yield


class ReviewWidget(QWidget):
    """Thumbnail gallery of the detected cells for review.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    differential : DifferentialWidget, optional
        The widget whose results are reviewed; found among the viewer's dock widgets when not
        given (opened from the Plugins menu).
    """

    def __init__(self, napari_viewer, differential=None):
        super().__init__()
        self._viewer = napari_viewer
        self.session: ReviewSession | None = None
        self._thumbs: dict[int, QImage] = {}
        self._items: dict[int, QListWidgetItem] = {}
        self._thumb_worker = None

        self._info = QLabel("Run the WBC differential, then review its cells here.")
        self._info.setWordWrap(True)
        self._queue = QComboBox()
        self._queue.addItem("All cells, by class", QUEUE_ALL)
        self._queue.addItem(f"Unidentified and uncertain (margin < {UNCERTAIN_MARGIN})",
                            QUEUE_UNCERTAIN)
        for cls in DISPLAY_ORDER:
            self._queue.addItem(f"Only {cls}", cls)
        self._queue.currentIndexChanged.connect(lambda _: self.rebuild())
        self.list = QListWidget()
        self.list.setViewMode(QListView.ViewMode.IconMode)
        self.list.setIconSize(QSize(THUMB, THUMB))
        self.list.setGridSize(QSize(THUMB + 48, THUMB + 40))
        self.list.setMovement(QListView.Movement.Static)
        self.list.setResizeMode(QListView.ResizeMode.Adjust)
        self.list.setUniformItemSizes(True)
        self.list.setWordWrap(True)
        self.list.setMinimumHeight(260)
        self.list.currentItemChanged.connect(self._on_current)
        self.list.installEventFilter(self)

        buttons = QGridLayout()
        for i, cls in enumerate(DISPLAY_ORDER[:9]):
            btn = QPushButton(f"{i + 1} {cls}")
            btn.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # the gallery keeps the keyboard
            btn.setStyleSheet(f"border-left: 6px solid {class_color(cls)}; padding: 3px;")
            btn.clicked.connect(lambda _=False, c=cls: self.assign(c))
            buttons.addWidget(btn, i // 3, i % 3)
        actions = QHBoxLayout()
        self._confirm_btn = self._button("Confirm (Space)", self.confirm_current)
        self._undo_btn = self._button("Undo (Ctrl+Z)", self.undo)
        self._all_btn = self._button("Mark all shown as reviewed", self.confirm_shown)
        self._refresh_btn = self._button("Regroup", self.rebuild)
        for b in (self._confirm_btn, self._undo_btn, self._all_btn, self._refresh_btn):
            actions.addWidget(b)
        self._file = QLabel("")
        self._file.setWordWrap(True)
        self._file.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._adapt_btn = self._button("Adapt to my lab…", self.adapt)
        self._adapt_bar = QProgressBar()
        self._adapt_bar.setVisible(False)
        self._adapt_label = QLabel("")
        self._adapt_label.setWordWrap(True)
        self._adapt_worker = None
        #: Passes over the reviewed cells for "Adapt to my lab" (``None``: the default
        #: schedule, :meth:`napari_ddrnet.adapt.AdaptConfig.default_steps`).
        self.adapt_epochs: int | None = None
        self.adapt_report = None

        layout = QVBoxLayout(self)
        layout.addWidget(self._info)
        row = QHBoxLayout()
        row.addWidget(QLabel("Show"))
        row.addWidget(self._queue, 1)
        layout.addLayout(row)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        layout.addLayout(actions)
        layout.addWidget(self._file)
        layout.addWidget(self._adapt_btn)
        layout.addWidget(self._adapt_bar)
        layout.addWidget(self._adapt_label)

        self.differential = differential or _find_differential(napari_viewer)
        if self.differential is not None:
            self.differential.review_listeners.append(self._on_new_session)
            self.differential._gallery = self
            if self.differential.review is not None:
                self.set_session(self.differential.review)
        self._update_info()

    def _button(self, text, slot) -> QPushButton:
        btn = QPushButton(text)
        btn.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        btn.clicked.connect(lambda _=False: slot())
        return btn

    # -- binding -----------------------------------------------------------------------------
    def _on_new_session(self, session: ReviewSession | None) -> None:
        try:
            self.set_session(session)
        except RuntimeError:  # this gallery's Qt object is gone: stop listening
            if self.differential is not None:
                self.differential.review_listeners.remove(self._on_new_session)

    def set_session(self, session: ReviewSession | None) -> None:
        """Show ``session`` (a new run); thumbnails are cut in the background."""
        if self.session is not None and self._on_change in self.session.listeners:
            self.session.listeners.remove(self._on_change)
        self.session = session
        self._thumbs.clear()
        if session is not None:
            session.listeners.append(self._on_change)
            self._start_thumbnails()
        self.rebuild()

    # -- gallery -----------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self._queue.currentData()

    def shown(self) -> list[int]:
        """``cell_id`` of the thumbnails shown, in gallery order."""
        return [c for c in (self.list.item(i).data(_CELL_ROLE) for i in range(self.list.count()))
                if c is not None]

    def rebuild(self) -> None:
        """Re-list and regroup the cells of the chosen view (after a run, a view or target
        change, or **Regroup**); keeps the current cell when it is still listed."""
        current = self.current_cell()
        self.list.blockSignals(True)
        self.list.clear()
        self._items.clear()
        s = self.session
        if s is not None:
            last_group = None
            ids = s.queue(self.kind)
            sizes = Counter(s.class_of(c) for c in ids)
            for cell_id in ids:
                cls = s.class_of(cell_id)
                if self.kind == QUEUE_ALL and cls != last_group:
                    self.list.addItem(self._header(cls, sizes[cls]))
                    last_group = cls
                item = QListWidgetItem()
                item.setData(_CELL_ROLE, cell_id)
                self._items[cell_id] = item
                self._render(cell_id)
                self.list.addItem(item)
        self.list.blockSignals(False)
        ids = self.shown()
        if ids:
            self.select(current if current in self._items else ids[0])
        self._update_info()

    def _header(self, cls: str, n: int) -> QListWidgetItem:
        item = QListWidgetItem(f"{cls}\n({n})")
        pix = QPixmap(THUMB, THUMB)
        pix.fill(QColor(class_color(cls)))
        item.setIcon(QIcon(pix))
        item.setFlags(Qt.ItemFlag.ItemIsEnabled)  # a divider, never selected
        return item

    def _render(self, cell_id: int) -> None:
        """Caption and framed icon of one cell: class colour frame, check mark once reviewed."""
        s, item = self.session, self._items.get(cell_id)
        if item is None or s is None:
            return
        cls = s.class_of(cell_id)
        row = s.row_of(cell_id)
        mark = " \u2713" if s.is_reviewed(cell_id) else ""
        model = s.cells.at[row, "model_class"]
        text = f"{cls}{mark}\n" + (f"\u2190 {model}" if cls != model  # "<- the model's call"
                                   else f"margin {s.margin[row]:.2f}")
        item.setText(text)
        item.setToolTip(f"cell {cell_id}: model {model} "
                        f"({s.cells.at[row, 'confidence']:.2f}), now {cls}"
                        f"{', reviewed' if mark else ''}")
        pix = QPixmap(THUMB, THUMB)
        pix.fill(QColor("#202020"))
        painter = QPainter(pix)
        img = self._thumbs.get(cell_id)
        if img is not None:
            scaled = img.scaled(THUMB - 8, THUMB - 8, Qt.AspectRatioMode.KeepAspectRatio,
                                Qt.TransformationMode.SmoothTransformation)
            painter.drawImage((THUMB - scaled.width()) // 2, (THUMB - scaled.height()) // 2,
                              scaled)
        pen = QPen(QColor(class_color(cls)))
        pen.setWidth(8 if mark else 4)
        painter.setPen(pen)
        painter.drawRect(2, 2, THUMB - 4, THUMB - 4)
        painter.end()
        item.setIcon(QIcon(pix))

    def _on_change(self, cell_ids: list[int]) -> None:
        try:
            if not cell_ids:  # target changed: the cells in the count changed
                self.rebuild()
                return
            for c in cell_ids:
                self._render(c)
            self._update_info()
        except RuntimeError:  # deleted Qt object (dock closed): stop listening
            if self.session is not None and self._on_change in self.session.listeners:
                self.session.listeners.remove(self._on_change)

    def _update_info(self) -> None:
        s = self.session
        if s is None:
            self._info.setText("Run the WBC differential, then review its cells here.")
            self._file.setText("")
            return
        scope = s.counted_mask(s.target)
        n_rev = int(s.cells.loc[scope, "reviewed"].sum())
        text = f"<b>{Path(s.image_name).name}</b>: reviewed {n_rev} / {int(scope.sum())}"
        n_wbc, reached = s.target_status()
        if s.target is None:
            text += f" (all {n_wbc} white cells)"
        elif reached:
            text += f" · target of {s.target} white cells reached"
        else:
            text += (f" · target {s.target} NOT reached: only {n_wbc} white cells in this "
                     "image")
        if not self.shown():
            text += "<br>No cells in this view."
        self._info.setText(text)
        where = f"Review saved on every change to: {s.path}" if s.path else "Not saved."
        if s.last_save_error:
            where = f"<span style='color:#ff6060'>Not saved: {s.last_save_error}</span>"
        self._file.setText(where)
        self._undo_btn.setEnabled(s.can_undo)

    # -- current cell ------------------------------------------------------------------------
    def current_cell(self) -> int | None:
        item = self.list.currentItem()
        return None if item is None else item.data(_CELL_ROLE)

    def select(self, cell_id: int) -> None:
        """Make ``cell_id`` current: the viewer centres, zooms and highlights it."""
        item = self._items.get(cell_id)
        if item is not None:
            self.list.setCurrentItem(item)
            self.list.scrollToItem(item)

    def _on_current(self, item, _previous=None) -> None:
        if item is None:
            return
        cell_id = item.data(_CELL_ROLE)
        if cell_id is None:  # a class divider was clicked: go to its first cell
            row = self.list.row(item)
            if row + 1 < self.list.count():
                self.list.setCurrentRow(row + 1)
            return
        self._focus_viewer(cell_id)

    def _focus_viewer(self, cell_id: int) -> None:
        s, diff = self.session, self.differential
        if s is None or diff is None or diff.result_layer is None:
            return
        layer = diff.result_layer
        row = s.cells.iloc[s.row_of(cell_id)]
        scale = np.asarray(layer.scale[-2:], float)
        shift = np.asarray(layer.translate[-2:], float)
        centre = shift + scale * np.array([row["centroid_row"], row["centroid_col"]])
        side = float(max(row["max_row"] - row["min_row"], row["max_col"] - row["min_col"], 8))
        self._viewer.camera.center = tuple(centre)
        canvas = getattr(getattr(self._viewer, "canvas", None), "size", None) or (600, 800)
        self._viewer.camera.zoom = float(min(canvas)) / (4.0 * side * float(scale.max()))
        diff.highlight(cell_id)

    def _step(self, delta: int) -> None:
        ids = self.shown()
        if not ids:
            return
        cur = self.current_cell()
        i = ids.index(cur) if cur in ids else -1
        self.select(ids[int(np.clip(i + delta, 0, len(ids) - 1))])

    def _columns(self) -> int:
        return max(1, self.list.viewport().width() // self.list.gridSize().width())

    # -- actions -----------------------------------------------------------------------------
    def assign(self, cls: str) -> None:
        """Move the current cell to ``cls`` (reviewed) and go to the next one."""
        cur = self.current_cell()
        if self.session is None or cur is None:
            return
        self.session.reassign(cur, cls)
        self._step(1)

    def confirm_current(self) -> None:
        """The current cell's class is right: mark it reviewed, go to the next one."""
        cur = self.current_cell()
        if self.session is None or cur is None:
            return
        self.session.confirm([cur])
        self._step(1)

    def confirm_shown(self) -> None:
        """Mark every cell shown (this view, within the count target) as reviewed."""
        if self.session is None:
            return
        n = self.session.confirm(self.shown())
        show_info(f"{n} cells marked as reviewed.")

    def undo(self) -> None:
        """Undo the last change and go back to the cell it touched."""
        if self.session is None:
            return
        ids = self.session.undo()
        if ids and ids[0] in self._items:
            self.select(ids[0])

    @staticmethod
    def is_gallery_key(key, modifiers) -> bool:
        """Whether :meth:`handle_key` uses this key."""
        ctrl = bool(modifiers & (Qt.KeyboardModifier.ControlModifier
                                 | Qt.KeyboardModifier.MetaModifier))
        if ctrl:
            return key == Qt.Key.Key_Z
        return key in _KEY_CLASS or key in _PLAIN_KEYS

    def handle_key(self, key, modifiers) -> bool:
        """Gallery keys; returns whether the key was used."""
        if not self.is_gallery_key(key, modifiers):
            return False
        ctrl = bool(modifiers & (Qt.KeyboardModifier.ControlModifier
                                 | Qt.KeyboardModifier.MetaModifier))
        if key in _KEY_CLASS and not ctrl:
            self.assign(_KEY_CLASS[key])
        elif key == Qt.Key.Key_Backspace or (key == Qt.Key.Key_Z and ctrl):
            self.undo()
        elif key in (Qt.Key.Key_Space, Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.confirm_current()
        elif key == Qt.Key.Key_Right:
            self._step(1)
        elif key == Qt.Key.Key_Left:
            self._step(-1)
        elif key == Qt.Key.Key_Down:
            self._step(self._columns())
        elif key == Qt.Key.Key_Up:
            self._step(-self._columns())
        else:
            return False
        return True

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt API)
        # The list would use digits for keyboard search and arrows over the dividers, and a
        # window shortcut (a napari menu action) could take Ctrl+Z: ours win while the gallery
        # has the focus (accepting ShortcutOverride turns the shortcut back into a key press).
        if event.type() == QEvent.Type.ShortcutOverride and self.is_gallery_key(
                event.key(), event.modifiers()):
            event.accept()
            return True
        if event.type() == QEvent.Type.KeyPress and self.handle_key(event.key(),
                                                                    event.modifiers()):
            return True
        return super().eventFilter(obj, event)

    def keyPressEvent(self, event) -> None:  # noqa: N802 (Qt API)
        if not self.handle_key(event.key(), event.modifiers()):
            super().keyPressEvent(event)

    # -- adaptation --------------------------------------------------------------------------
    def adapt(self):
        """Fine-tune the run's model on this image's reviewed cells (worker thread).

        Too few reviewed cells: a notification says how many more are needed, nothing runs.
        Returns the worker, or ``None``.
        """
        from .adapt import MIN_CELLS, MIN_CLASSES

        s, diff = self.session, self.differential
        if s is None or diff is None or diff.result_data is None:
            show_info("Run the WBC differential and review some cells first.")
            return None
        if self._adapt_worker is not None:
            show_info("An adaptation is already running.")
            return None
        cells = s.table_for_csv()
        named = cells[cells["reviewed"] & (cells["reviewed_class"] != "")
                      & (cells["reviewed_class"] != "unidentified")]
        n, k = len(named), named["reviewed_class"].nunique()
        if n < MIN_CELLS or k < MIN_CLASSES:
            show_info(f"Too few reviewed cells to adapt the model: {n} in {k} class(es). "
                      f"Review at least {MIN_CELLS} cells in {MIN_CLASSES} classes (confirmed "
                      "or moved; 'unidentified' does not count), plus some to hold out for "
                      "the before/after check. Images of one or two cells each (single-cell "
                      "exports, sparse fields): review several, then adapt from all their "
                      "review files at once: napari-ddrnet adapt --cells-csv *.review.csv")
            return None
        # errored goes through _connect: connected later, napari would also re-raise the
        # error into Qt's event loop (a traceback dump on top of our notification).
        worker = create_worker(_adapt_steps, cells, {s.image_name: diff.result_data},
                               diff.weights_used, diff.result_single, diff.device,
                               self.adapt_epochs, _connect={"errored": self._adapt_failed},
                               _start_thread=False)
        worker.yielded.connect(self._adapt_progress)
        worker.returned.connect(self._adapt_done)
        worker.finished.connect(self._adapt_finished)
        self._adapt_worker = worker
        self._adapt_btn.setEnabled(False)
        self._adapt_bar.setRange(0, 0)  # busy until the first step reports its total
        self._adapt_bar.setVisible(True)
        self._adapt_label.setText(f"Adapting the model on {n} reviewed cells…")
        worker.start()
        return worker

    def _adapt_progress(self, step) -> None:
        done, total = step
        self._adapt_bar.setRange(0, int(total))
        self._adapt_bar.setValue(int(done))

    def _adapt_done(self, report) -> None:
        self.adapt_report = report

        def pct(v):
            return "n/a" if v is None else f"{100 * v:.0f} %"

        text = (f"Saved model '{report.path.stem}' ({report.n_train} cells trained). "
                f"Held-out accuracy on {report.n_holdout} reviewed cells: "
                f"{pct(report.before_accuracy)} before, {pct(report.after_accuracy)} after. "
                "Choose it in the widget's Model list to use it.")
        if not report.n_holdout:
            text = (f"Saved model '{report.path.stem}' ({report.n_train} cells trained); no "
                    "cell could be held out to measure it: review more cells.")
        self._adapt_label.setText(text)
        show_info(text)
        if self.differential is not None:
            self.differential._model.reset_choices()

    def _adapt_failed(self, exc: Exception) -> None:
        self._adapt_label.setText(f"Adaptation failed: {exc}")
        show_error(f"Adaptation failed: {exc}")
        if _unexpected(exc):  # its traceback goes to the log, not the UI
            logging.getLogger(__name__).error("Adapt to my lab failed", exc_info=exc)

    def _adapt_finished(self) -> None:
        self._adapt_worker = None
        self._adapt_btn.setEnabled(True)
        self._adapt_bar.setVisible(False)

    # -- thumbnails --------------------------------------------------------------------------
    def _start_thumbnails(self) -> None:
        if self._thumb_worker is not None:
            self._thumb_worker.quit()
        diff = self.differential
        if diff is None or diff.result_data is None or self.session is None:
            return
        cells = self.session.cells
        boxes = cells[["cell_id", "min_row", "min_col", "max_row", "max_col"]].to_numpy(int)
        session = self.session
        worker = create_worker(_thumbnail_batches, diff.result_data, boxes,
                               _start_thread=False)
        worker.yielded.connect(lambda batch: self._add_thumbs(batch, session))
        worker.finished.connect(lambda: self._thumbs_done(worker))
        self._thumb_worker = worker
        worker.start()

    def _add_thumbs(self, batch, session) -> None:
        if session is not self.session:  # a newer run replaced it
            return
        for cell_id, rgb in batch:
            h, w = rgb.shape[:2]
            self._thumbs[cell_id] = QImage(rgb.data, w, h, 3 * w,
                                           QImage.Format.Format_RGB888).copy()
            self._render(cell_id)

    def _thumbs_done(self, worker) -> None:
        if self._thumb_worker is worker:
            self._thumb_worker = None


#: Run "Adapt to my lab" in a separate (spawned) process: see
#: :func:`napari_ddrnet.adapt.run_adapt_job` for why. Tests that replace the adaptation with a
#: stand-in in this process switch it off.
ADAPT_IN_SUBPROCESS = True


def _adapt_steps(cells, images, base_weights, single_cell, device="auto", epochs=None):
    """Run :func:`~napari_ddrnet.adapt.adapt_from_cells` on the device chosen for the
    analysis, yielding its ``(done, total)`` steps (a generator worker reports them to the Qt
    thread) and returning its report. The process is a daemon: it ends with napari.

    Every failure is re-raised as an :class:`~napari_ddrnet.adapt.AdaptError`: napari's
    worker treats a ``RuntimeError`` from a generator as "worker deleted" and would send no
    signal at all, leaving the gallery busy for good."""
    from .adapt import AdaptError

    kwargs = dict(images=images, base_weights=base_weights, single_cell=single_cell,
                  device=device, epochs=epochs)
    try:
        if ADAPT_IN_SUBPROCESS:
            return (yield from _adapt_in_process(cells, kwargs))
        return (yield from _adapt_in_thread(cells, kwargs))
    except AdaptError:
        raise
    except Exception as exc:
        raise AdaptError(f"{type(exc).__name__}: {exc}") from exc


def _sendable(images: dict) -> dict:
    """``images`` as a spawned process can receive them: arrays that cannot be pickled (e.g.
    dask over tifffile's zarr store) are left out when their name is a readable file, which
    the process then reads itself, else read into memory here."""
    import pickle

    out = {}
    for name, data in images.items():
        if isinstance(data, np.ndarray):
            out[name] = data
            continue
        try:
            pickle.dumps(data)
            out[name] = data
        except Exception:
            from pathlib import Path

            if not Path(str(name)).is_file():
                out[name] = np.asarray(data)
    return out


def _adapt_in_process(cells, kwargs):
    import multiprocessing

    from .adapt import AdaptError, run_adapt_job

    ctx = multiprocessing.get_context("spawn")  # a fork would inherit napari's OpenGL libraries
    messages = ctx.Queue()
    kwargs = {**kwargs, "images": _sendable(kwargs.get("images") or {})}
    job = ctx.Process(target=run_adapt_job, args=(messages, cells, kwargs),
                      name="napari-ddrnet-adapt", daemon=True)
    job.start()
    try:
        while True:
            try:
                msg = messages.get(timeout=0.5)
            except queue.Empty:
                if job.is_alive():
                    continue
                try:  # its last message may still be on its way
                    msg = messages.get(timeout=2)
                except queue.Empty:
                    raise AdaptError(f"the adaptation stopped unexpectedly (exit code "
                                     f"{job.exitcode}); nothing was written") from None
            if msg[0] == "progress":
                yield msg[1], msg[2]
            elif msg[0] == "done":
                job.join(timeout=5)  # it exits by itself once its report is sent
                return msg[1]
            else:
                raise child_error(msg)
    finally:
        if job.is_alive():  # stopped early (napari closing, a failure): no model is written
            job.terminate()
            job.join(timeout=1)


def _unexpected(exc: BaseException) -> bool:
    """Whether a failure of the adaptation is a fault rather than a user's error (too few
    cells, unreadable image, bad weights): a fault brings a traceback, from the adaptation
    process (:class:`ChildTraceback`) or from the thread (an exception that is not ours)."""
    from .adapt import AdaptError
    from .weights import WeightsError

    while exc is not None:
        if isinstance(exc, ChildTraceback) or not isinstance(exc, (AdaptError, WeightsError,
                                                                    OSError)):
            return True
        exc = exc.__cause__
    return False


class ChildTraceback(Exception):
    """The adaptation process's traceback, chained under its error as the error's cause (as
    ``multiprocessing.pool`` does), so napari's traceback view and logs show where it failed."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


def child_error(msg: tuple) -> BaseException:
    """The exception of an ``("error", exception or text, traceback)`` message of
    :func:`napari_ddrnet.adapt.run_adapt_job`, with the process's traceback as its cause."""
    from .adapt import AdaptError

    err = msg[1] if isinstance(msg[1], BaseException) else AdaptError(msg[1])
    if len(msg) > 2 and msg[2]:
        err.__cause__ = ChildTraceback(msg[2])
    return err


def _adapt_in_thread(cells, kwargs):
    from .adapt import adapt_from_cells

    steps: queue.Queue = queue.Queue()
    out: dict = {}

    def run():
        try:
            out["report"] = adapt_from_cells(cells, progress=lambda d, t: steps.put((d, t)),
                                             **kwargs)
        except BaseException as exc:  # re-raised in the worker: napari's errored signal
            out["error"] = exc
        finally:
            steps.put(None)

    thread = threading.Thread(target=run, name="napari-ddrnet-adapt", daemon=True)
    thread.start()
    while (step := steps.get()) is not None:
        yield step
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["report"]


def _thumbnail_batches(data, boxes: np.ndarray, pad: float = 0.3, side: int = THUMB * 2):
    """Yield lists of ``(cell_id, rgb uint8)``: each box with a margin, at most ``side`` px."""
    from .image_input import value_range
    from .sampling import sample_windows

    h, w = data.shape[:2]
    # One scaling for every thumbnail, from the whole image (as the pipeline scales tiles).
    vrange = value_range(sample_windows(data)) if data.dtype != np.uint8 else None
    batch = []
    for cell_id, r0, c0, r1, c1 in boxes:
        m = int(pad * max(r1 - r0, c1 - c0))
        r0, c0, r1, c1 = max(0, r0 - m), max(0, c0 - m), min(h, r1 + m), min(w, c1 + m)
        step = max(1, int(np.ceil(max(r1 - r0, c1 - c0) / side)))
        crop = np.asarray(data[r0:r1:step, c0:c1:step])
        batch.append((int(cell_id), _to_rgb8(crop, vrange)))
        if len(batch) >= _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _to_rgb8(crop: np.ndarray, vrange: tuple[float, float] | None = None) -> np.ndarray:
    """A thumbnail as contiguous RGB uint8, scaled by the image-wide ``vrange``."""
    from .image_input import to_rgb_uint8

    return to_rgb_uint8(crop, vrange)


def _find_differential(viewer):
    """The DifferentialWidget docked in ``viewer``, if any."""
    from ._widget import DifferentialWidget

    try:
        docks = viewer.window.dock_widgets
    except AttributeError:
        return None
    for widget in docks.values():
        if isinstance(widget, DifferentialWidget):
            return widget
    return None


__all__ = ["ReviewWidget"]
