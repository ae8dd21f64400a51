"""Review of a differential by a person: reassign, confirm, undo, count target, autosave.

Pure (no Qt, no viewer), so every rule is unit-tested: the napari gallery
(:mod:`napari_ddrnet._review_widget`) and the layers only display a :class:`ReviewSession`.

The cells table keeps the analysis columns and adds the review columns of
:data:`napari_ddrnet.schema.REVIEW_COLUMNS`: ``model_class`` (the model's call, never changed),
``reviewed_class`` (the person's call, empty until the cell is reviewed) and ``reviewed``.
``class`` is always the current call: the reviewed class where there is one, else the model's.

Every change is written at once, atomically, to the session's review file, so closing napari or a
crash loses nothing; :meth:`ReviewSession.restore` reads it back when the same image (same
:func:`image_key`) is analysed again, matching cells by their boxes.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from .classes import DISPLAY_ORDER, UNIDENTIFIED, WBC_CLASSES
from .report import counts_table, csv_tables, write_csv_atomic
from .schema import BOX_COLUMNS, prob_columns, with_review_defaults

#: Suffix of review files (``smear.tif`` -> ``smear.review.csv``).
REVIEW_SUFFIX = ".review.csv"
#: Cells whose top-two probability margin is below this are in the "uncertain" queue.
UNCERTAIN_MARGIN = 0.25
#: Boxes of the same cell from two runs differ by at most this many pixels per side.
MATCH_TOLERANCE_PX = 2
#: Count targets offered (white cells); ``None`` counts every white cell.
TARGETS: tuple[int | None, ...] = (None, 100, 200)

QUEUE_ALL = "all"
QUEUE_UNCERTAIN = "uncertain"

_BOX = list(BOX_COLUMNS)


def image_key(array, grid: int = 8, window: int = 16) -> str:
    """Content hash of an image: sha256 of its shape, dtype and a fixed pixel subsample.

    ``grid x grid`` windows of ``window`` pixels, spread evenly over the image, are hashed, so a
    whole-slide (dask/zarr) image costs a few small reads while two different smears never
    share a key. Multiscale data: pass the full-resolution level.
    """
    shape = tuple(int(s) for s in array.shape)
    h, w = shape[:2]
    digest = hashlib.sha256(f"{shape}|{np.dtype(array.dtype).str}".encode())
    rows = np.unique(np.linspace(0, max(h - window, 0), grid).astype(int))
    cols = np.unique(np.linspace(0, max(w - window, 0), grid).astype(int))
    for r in rows:
        for c in cols:
            block = np.ascontiguousarray(np.asarray(array[r:r + window, c:c + window]))
            digest.update(block.tobytes())
    return digest.hexdigest()


def margins(cells: pd.DataFrame, classes: Iterable[str]) -> np.ndarray:
    """Top probability minus the second one, per cell (small = the model hesitated)."""
    cols = [c for c in prob_columns(classes) if c in cells]
    if len(cols) < 2 or not len(cells):
        return np.ones(len(cells))
    p = np.sort(cells[cols].to_numpy(float), axis=1)
    return p[:, -1] - p[:, -2]


def scan_order(cells: pd.DataFrame) -> np.ndarray:
    """Row positions in scan order: top to bottom, then left to right, by centroid."""
    return np.lexsort((cells["centroid_col"].to_numpy(), cells["centroid_row"].to_numpy()))


def default_review_path(image_name: str, key: str, source_path: str | os.PathLike | None = None,
                        user_dir: Path | None = None) -> Path:
    """Where the review of an image is saved.

    Beside the image (``<stem>.review.csv``) when it came from a file in a writable folder, else
    in the user data folder (``user_dir``, default ``user_models_dir().parent / "reviews"``)
    as ``<name>-<key[:12]>.review.csv``: the key keeps different images with one name apart.
    When ``<stem>.review.csv`` exists but holds the review of other pixels (the file was
    changed), ``<stem>-<key[:12]>.review.csv`` is used so that review is never overwritten.
    """
    if source_path:
        src = Path(source_path)
        if src.parent.is_dir() and os.access(src.parent, os.W_OK):
            stem = src.name.split(".")[0]
            path = src.with_name(stem + REVIEW_SUFFIX)
            if path.exists():
                saved = read_review(path)
                if saved is None or (saved["image_key"].astype(str) != key).any():
                    path = src.with_name(f"{stem}-{key[:12]}{REVIEW_SUFFIX}")
            return path
    if user_dir is None:
        from .user_models import user_models_dir

        user_dir = user_models_dir().parent / "reviews"
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", image_name).strip("._") or "image"
    return Path(user_dir) / f"{safe}-{key[:12]}{REVIEW_SUFFIX}"


class ReviewSession:
    """The review state of one analysed image.

    Parameters
    ----------
    cells : pandas.DataFrame
        ``AnalysisResult.cells`` (geometry, ``class``, ``confidence``, ``prob_<class>``).
    classes : sequence of str
        The model's classes (for the margins).
    image_name : str
        Layer or file name, written in the review file and the CSVs.
    key : str
        :func:`image_key` of the analysed pixels; restoring requires the same key.
    path : path-like, optional
        Review file; ``None`` disables autosave (tests, or a session only shown).
    pixel_size_um : float
        Written on every row, like CELLS.csv.
    model : str
        Name of the model that made the calls (CELLS.csv's ``model`` column).
    """

    def __init__(self, cells: pd.DataFrame, classes: Iterable[str], *, image_name: str = "",
                 key: str = "", path: str | os.PathLike | None = None,
                 pixel_size_um: float = float("nan"), model: str = ""):
        self.classes = tuple(classes)
        table = with_review_defaults(cells.reset_index(drop=True))
        table["model_class"] = table["model_class"].astype(object)
        self.cells = table
        self.cells["class"] = self._current()
        self.image_name = image_name
        self.key = key
        self.path = Path(path) if path is not None else None
        self.pixel_size_um = float(pixel_size_um)
        self.model = model
        self.target: int | None = None
        self.margin = margins(self.cells, self.classes)
        self._row = {int(c): i for i, c in enumerate(self.cells["cell_id"])}
        self._undo: list[list[tuple[int, str, bool]]] = []
        #: Called with the list of changed ``cell_id`` after every change (the views refresh).
        self.listeners: list[Callable[[list[int]], None]] = []
        self.last_save_error: str = ""

    # -- state -------------------------------------------------------------------------------
    def _current(self) -> pd.Series:
        rev = self.cells["reviewed_class"].astype(str)
        return rev.where(rev != "", self.cells["model_class"]).astype(object)

    def class_of(self, cell_id: int) -> str:
        """The current class of a cell (reviewed if reviewed, else the model's)."""
        return str(self.cells.at[self._row[int(cell_id)], "class"])

    def is_reviewed(self, cell_id: int) -> bool:
        return bool(self.cells.at[self._row[int(cell_id)], "reviewed"])

    def row_of(self, cell_id: int) -> int:
        """Position of ``cell_id`` in :attr:`cells` (and in the layers' features)."""
        return self._row[int(cell_id)]

    @property
    def n_reviewed(self) -> int:
        return int(self.cells["reviewed"].sum())

    # -- changes -----------------------------------------------------------------------------
    def reassign(self, cell_id: int, cls: str) -> None:
        """The reviewer says ``cell_id`` is ``cls`` (also confirms it). One undo step."""
        if cls not in DISPLAY_ORDER and cls not in self.classes:
            raise ValueError(f"unknown class {cls!r}")
        self._apply([(int(cell_id), cls)])

    def confirm(self, cell_ids: Iterable[int]) -> int:
        """Mark cells as reviewed with their current class; returns how many changed.

        All of them form one undo step ("mark all shown as reviewed").
        """
        todo = [(int(c), self.class_of(c)) for c in cell_ids if not self.is_reviewed(c)]
        if todo:
            self._apply(todo)
        return len(todo)

    def undo(self) -> list[int]:
        """Revert the last change (several levels); returns the cells it touched."""
        if not self._undo:
            return []
        step = self._undo.pop()
        for cell_id, cls, reviewed in step:
            i = self._row[cell_id]
            self.cells.at[i, "reviewed_class"] = cls
            self.cells.at[i, "reviewed"] = reviewed
        ids = [c for c, _, _ in step]
        self._changed(ids)
        return ids

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    def _apply(self, changes: list[tuple[int, str]]) -> None:
        before = []
        for cell_id, cls in changes:
            i = self._row[cell_id]
            before.append((cell_id, str(self.cells.at[i, "reviewed_class"]),
                           bool(self.cells.at[i, "reviewed"])))
            self.cells.at[i, "reviewed_class"] = cls
            self.cells.at[i, "reviewed"] = True
        self._undo.append(before)
        self._changed([c for c, _ in changes])

    def _changed(self, ids: list[int]) -> None:
        self.cells["class"] = self._current()
        self.save()
        for fn in list(self.listeners):
            fn(ids)

    # -- orderings ---------------------------------------------------------------------------
    def counted_mask(self, target: int | None = None, column: str = "class") -> np.ndarray:
        """Cells in the count: in scan order up to and including the ``target``-th white cell.

        Erythroblasts, platelets and unidentified cells met on the way are counted with them,
        as in a manual count. ``target=None``: every cell. ``column``: ``class`` (current call)
        or ``model_class`` (what the model alone would have counted).
        """
        mask = np.zeros(len(self.cells), bool)
        order = scan_order(self.cells)
        if target is None:
            mask[:] = True
            return mask
        is_wbc = self.cells[column].isin(WBC_CLASSES).to_numpy()[order]
        n = np.cumsum(is_wbc)
        stop = int(np.searchsorted(n, target)) + 1 if n.size and n[-1] >= target else len(order)
        mask[order[:stop]] = True
        return mask

    def target_status(self) -> tuple[int, bool]:
        """``(white cells counted, target reached)`` for :attr:`target`."""
        n = int(self.cells.loc[self.counted_mask(self.target), "class"].isin(WBC_CLASSES).sum())
        return n, self.target is None or n >= self.target

    def queue(self, kind: str = QUEUE_ALL) -> list[int]:
        """``cell_id`` in review order for a gallery view.

        ``all``: grouped by current class in clinical order (:data:`DISPLAY_ORDER`), least
        certain first within a class; ``uncertain``: cells the model called unidentified or
        whose margin is below :data:`UNCERTAIN_MARGIN`, least certain first; a class name: that
        class only. Only cells in the count (:attr:`target`) are listed.
        """
        keep = self.counted_mask(self.target)
        cls = self.cells["class"].astype(str).to_numpy()
        if kind == QUEUE_ALL:
            rank = {c: i for i, c in enumerate(DISPLAY_ORDER)}
            group = np.array([rank.get(c, len(rank)) for c in cls])
        elif kind == QUEUE_UNCERTAIN:
            keep &= ((self.cells["model_class"] == UNIDENTIFIED).to_numpy()
                     | (self.margin < UNCERTAIN_MARGIN))
            group = np.zeros(len(cls), int)
        else:
            keep &= cls == kind
            group = np.zeros(len(cls), int)
        order = np.lexsort((self.cells["cell_id"].to_numpy(), self.margin, group))
        ids = self.cells["cell_id"].to_numpy()
        return [int(ids[i]) for i in order if keep[i]]

    # -- counts ------------------------------------------------------------------------------
    def counts(self, target: int | None = ...) -> pd.DataFrame:
        """The differential after review beside the model's, in clinical order.

        Columns: ``class``, ``count``, ``percent`` (after review: reviewed class where a person
        set one, else the model's), ``basis`` (:func:`napari_ddrnet.report.counts_table`
        rules), ``model_count``, ``model_percent`` (the model alone), ``n_reviewed`` (how many
        of ``count`` a person confirmed), ``wbc_target`` (empty: all white cells).
        ``target`` defaults to :attr:`target`; each differential counts its own first
        ``target`` white cells in scan order.
        """
        if target is ...:
            target = self.target
        cur_mask = self.counted_mask(target, "class")
        mod_mask = self.counted_mask(target, "model_class")
        final = counts_table(self.cells.loc[cur_mask, "class"])
        model = counts_table(self.cells.loc[mod_mask, "model_class"]).set_index("class")
        rev = self.cells[cur_mask & self.cells["reviewed"].to_numpy()]
        n_rev = rev["class"].value_counts()
        classes = list(final["class"]) + [c for c in model.index if c not in set(final["class"])]
        final = final.set_index("class").reindex(classes)
        out = pd.DataFrame({
            "class": classes,
            "count": final["count"].fillna(0).astype(int).to_numpy(),
            "percent": final["percent"].to_numpy(float),
            "basis": final["basis"].fillna(model["basis"].reindex(classes)).to_numpy(),
            "model_count": model["count"].reindex(classes).fillna(0).astype(int).to_numpy(),
            "model_percent": model["percent"].reindex(classes).to_numpy(float),
            "n_reviewed": [int(n_rev.get(c, 0)) for c in classes],
            "wbc_target": [target if target is not None else pd.NA] * len(classes),
        })
        out["wbc_target"] = out["wbc_target"].astype("Int64")
        return out

    # -- files -------------------------------------------------------------------------------
    def table_for_csv(self) -> pd.DataFrame:
        """CELLS.csv rows (``class`` = current call, review columns filled)."""
        cells, _ = csv_tables(self.image_name, self.cells, self.counts(None), self.classes,
                              self.pixel_size_um, model=self.model)
        return cells

    def save(self) -> Path | None:
        """Write the review file atomically (CELLS.csv columns + ``image_key``).

        A failure is remembered in :attr:`last_save_error` (the view tells the user) rather than
        raised into the middle of a keystroke; the next change tries again.
        """
        if self.path is None:
            return None
        table = self.table_for_csv()
        table["image_key"] = self.key
        try:
            write_csv_atomic(table, self.path)
        except OSError as exc:
            self.last_save_error = f"{self.path}: {exc}"
            return None
        self.last_save_error = ""
        return self.path

    def restore(self, path: str | os.PathLike | None = None) -> int:
        """Apply a saved review of the same image; returns the number of cells restored.

        Only a file whose ``image_key`` equals :attr:`key` is used, and a saved row applies to
        the current cell whose box matches within :data:`MATCH_TOLERANCE_PX` on every side (the
        closest one; each saved row at most once). Restoring is not an undo step.
        """
        path = Path(path) if path is not None else self.path
        if path is None or not path.is_file():
            return 0
        saved = read_review(path)
        if saved is None or not self.key or (saved["image_key"].astype(str) != self.key).any():
            return 0
        saved = saved[saved["reviewed"]]
        if not len(saved) or not len(self.cells):
            return 0
        from scipy.spatial import cKDTree

        cur = self.cells[_BOX].to_numpy(float)
        old = saved[_BOX].to_numpy(float)
        # Nearest saved box per current box in the max-norm, within the tolerance: a KD-tree
        # keeps a whole slide (tens of thousands of cells) in linear memory.
        dist, nearest = cKDTree(old).query(cur, k=min(4, len(old)), p=np.inf,
                                           distance_upper_bound=MATCH_TOLERANCE_PX + 1e-9)
        dist, nearest = dist.reshape(len(cur), -1), nearest.reshape(len(cur), -1)
        used = np.zeros(len(old), bool)
        n = 0
        for i in np.argsort(dist[:, 0], kind="stable"):  # best matches first
            free = [k for k in range(dist.shape[1])
                    if np.isfinite(dist[i, k]) and not used[nearest[i, k]]]
            if not free:
                continue
            j = int(nearest[i, free[0]])
            used[j] = True
            self.cells.at[int(i), "reviewed_class"] = str(saved["reviewed_class"].iloc[j])
            self.cells.at[int(i), "reviewed"] = True
            n += 1
        if n:
            self.cells["class"] = self._current()
        return n


def read_review(path: str | os.PathLike) -> pd.DataFrame | None:
    """A review file as a table, or ``None`` when it is not one (unreadable, columns missing)."""
    try:
        df = pd.read_csv(path, dtype={"reviewed_class": str, "image_key": str},
                         keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    if not {"image_key", "reviewed", "reviewed_class", *_BOX} <= set(df.columns):
        return None
    df["reviewed"] = df["reviewed"].astype(str).str.lower().isin(("true", "1"))
    return df


__all__ = ["QUEUE_ALL", "QUEUE_UNCERTAIN", "REVIEW_SUFFIX", "ReviewSession", "TARGETS",
           "UNCERTAIN_MARGIN", "default_review_path", "image_key", "margins", "read_review",
           "scan_order"]
