"""The per-cell table: one definition of its columns and dtypes, used by every layer of the code.

Segmentation fills the geometry (:data:`GEOMETRY_COLUMNS`), classification adds ``class``,
``confidence`` and ``prob_<class>``; the CSV writer, the napari layers and the review all read
their column lists from here, so a new column is added in one place.
"""

from __future__ import annotations

import pandas as pd

#: Geometry of a cell, in pixels of the analysed image (``max_*`` exclusive).
GEOMETRY_DTYPES: dict[str, str] = {
    "cell_id": "int64",
    "centroid_row": "float64",
    "centroid_col": "float64",
    "min_row": "int64",
    "min_col": "int64",
    "max_row": "int64",
    "max_col": "int64",
    "area_px": "int64",
    "nucleus_area_px": "int64",
    "area_um2": "float64",
    "nucleus_area_um2": "float64",
    "touches_border": "bool",
}
GEOMETRY_COLUMNS: list[str] = list(GEOMETRY_DTYPES)
#: A cell's bounding box, pixels, max exclusive (the order torchvision's box ops use).
BOX_COLUMNS: tuple[str, str, str, str] = ("min_row", "min_col", "max_row", "max_col")

#: Classification columns that precede the per-class probabilities.
PREDICTION_COLUMNS: list[str] = ["class", "confidence"]

#: The review of each cell: what the model said, what the reviewer decided, whether reviewed.
#: ``reviewed_class`` is empty until a person confirms or corrects the cell.
REVIEW_DTYPES: dict[str, str] = {"model_class": "object", "reviewed_class": "object",
                                 "reviewed": "bool"}
REVIEW_COLUMNS: list[str] = list(REVIEW_DTYPES)

#: CELLS.csv: ``image`` + these, then ``prob_<class>``, then :data:`CSV_TAIL_COLUMNS`.
CSV_HEAD_COLUMNS: list[str] = ["cell_id", "centroid_row", "centroid_col", "min_row", "min_col",
                               "max_row", "max_col", *PREDICTION_COLUMNS]
CSV_TAIL_COLUMNS: list[str] = ["area_um2", "nucleus_area_um2", "touches_border",
                               "pixel_size_um", "pixel_size_source", "crop_mode", "model",
                               *REVIEW_COLUMNS]
#: ``crop_mode`` values: how the model's crop of a row was cut, so that adapting from a
#: reviewed CELLS.csv re-cuts it the same way. ``field``: around the cell, at the model's field
#: of view in µm; ``single-cell``: the image's centred square (``count --single-cell``).
CROP_FIELD = "field"
CROP_SINGLE_CELL = "single-cell"

#: Columns of the ``features`` table every napari layer carries (before/after the probabilities).
FEATURE_HEAD_COLUMNS: list[str] = ["cell_id", *PREDICTION_COLUMNS]
FEATURE_TAIL_COLUMNS: list[str] = ["area_um2", "nucleus_area_um2", "touches_border"]


def prob_columns(classes) -> list[str]:
    """``prob_<class>`` column names, in the model's class order."""
    return [f"prob_{c}" for c in classes]


def cells_csv_columns(classes) -> list[str]:
    """Columns of CELLS.csv for a model with ``classes`` (docs/csv-formats.md)."""
    return ["image", *CSV_HEAD_COLUMNS, *prob_columns(classes), *CSV_TAIL_COLUMNS]


def feature_columns(classes) -> list[str]:
    """Columns of the napari layers' ``features`` table."""
    return [*FEATURE_HEAD_COLUMNS, *prob_columns(classes), *FEATURE_TAIL_COLUMNS]


def with_review_defaults(cells: pd.DataFrame) -> pd.DataFrame:
    """``cells`` with the review columns, filled as "not reviewed" where absent.

    ``model_class`` defaults to ``class`` (the model's call); ``reviewed_class`` to empty.
    """
    out = cells.copy()
    if "model_class" not in out:
        out["model_class"] = out["class"] if "class" in out else pd.Series(dtype=object)
    if "reviewed_class" not in out:
        out["reviewed_class"] = ""
    if "reviewed" not in out:
        out["reviewed"] = False
    out["reviewed_class"] = out["reviewed_class"].fillna("").astype(object)
    out["reviewed"] = out["reviewed"].astype(bool)
    return out


def empty_geometry() -> pd.DataFrame:
    """An empty geometry table with the right columns and dtypes."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in GEOMETRY_DTYPES.items()})


def with_geometry_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its geometry columns cast to :data:`GEOMETRY_DTYPES`."""
    return df.astype({c: t for c, t in GEOMETRY_DTYPES.items() if c in df.columns})
