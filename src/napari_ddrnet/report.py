"""The differential count and CSV output (atomic: a CSV is either complete or not there)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from .classes import DISPLAY_ORDER, PER_100_WBC, WBC_CLASSES
from .schema import CROP_FIELD, cells_csv_columns, with_review_defaults

COUNT_COLUMNS = ["class", "count", "percent", "basis"]


def counts_table(classes: Iterable[str]) -> pd.DataFrame:
    """Per-class counts in display order, every class listed (zero counts included).

    ``percent`` follows laboratory practice: white-cell classes as % of all white cells (the
    differential), erythroblasts per 100 white cells, platelets and unidentified cells as % of
    all detected objects. ``basis`` says which, so a CSV reader never has to guess.
    """
    s = pd.Series(list(classes), dtype=object)
    counts = s.value_counts()
    n_all = int(len(s))
    n_wbc = int(sum(counts.get(c, 0) for c in WBC_CLASSES))
    extra = [c for c in counts.index if c not in DISPLAY_ORDER]
    rows = []
    for c in list(DISPLAY_ORDER) + sorted(extra):
        k = int(counts.get(c, 0))
        if c in WBC_CLASSES:
            pct, basis = (100.0 * k / n_wbc if n_wbc else np.nan), "% of WBC"
        elif c in PER_100_WBC:
            pct, basis = (100.0 * k / n_wbc if n_wbc else np.nan), "per 100 WBC"
        else:
            pct, basis = (100.0 * k / n_all if n_all else np.nan), "% of all cells"
        rows.append({"class": c, "count": k, "percent": pct, "basis": basis})
    return pd.DataFrame(rows, columns=COUNT_COLUMNS)


def csv_tables(image_name: str, cells: pd.DataFrame, counts: pd.DataFrame, classes,
               pixel_size_um: float, pixel_size_source: str = "", model: str = ""
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """CELLS.csv and COUNTS.csv rows of one image (docs/csv-formats.md), ``image`` column first.

    ``pixel_size_um`` goes on every cell row, so the geometry can be re-cut from the image later
    (e.g. to adapt the model from reviewed cells), with ``pixel_size_source`` (``given``,
    ``metadata``, ``estimated`` or ``default``) so a reader can tell a measured scale from a
    fallback, ``crop_mode`` (``field`` unless ``cells`` says otherwise) and ``model`` (the
    name of the weights that made the calls, for traceability). The review
    columns (``model_class``, ``reviewed_class``, ``reviewed``) are taken from ``cells`` when
    it has them, else they say "not reviewed".
    """
    cells_out = with_review_defaults(cells).assign(image=image_name,
                                                   pixel_size_um=float(pixel_size_um),
                                                   pixel_size_source=pixel_size_source,
                                                   model=model)
    if "crop_mode" not in cells_out:  # single-cell results carry their own
        cells_out["crop_mode"] = CROP_FIELD
    cells_out = cells_out.reindex(columns=cells_csv_columns(classes))
    counts_out = counts.copy()
    counts_out.insert(0, "image", image_name)
    return cells_out, counts_out


def write_csv_atomic(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` to ``path`` through a temporary file in the same folder, then rename.

    An interrupted write never leaves a partial CSV, and an existing file is only replaced by a
    complete one.
    """
    from .atomic import write_text_atomic

    return write_text_atomic(path, lambda fh: df.to_csv(fh, index=False, float_format="%.6g"))


__all__ = ["COUNT_COLUMNS", "counts_table", "csv_tables", "write_csv_atomic"]
