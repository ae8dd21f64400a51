"""Build and update napari layer data from an analysis result (pure: no Qt, no viewer).

Every layer carries the same per-cell ``features`` table, so clicking a point, a box or a mask
shows the class, the confidence, the per-class probabilities and the review state
(``model_class``, ``reviewed_class``, ``reviewed``). Colours and text follow ``class``, the
current call (the reviewer's where a person reviewed the cell, else the model's).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .classes import class_color
from .pipeline import AnalysisResult
from .schema import BOX_COLUMNS, REVIEW_COLUMNS, feature_columns, with_review_defaults

LABELS_NAME = "WBC masks"
POINTS_NAME = "WBC classes"
SHAPES_NAME = "WBC boxes"
OUR_LAYERS = (LABELS_NAME, POINTS_NAME, SHAPES_NAME)
#: Box edge width, and that of the cell selected in the review gallery.
EDGE_WIDTH, HIGHLIGHT_EDGE_WIDTH = 3.0, 9.0
REVIEWED_MARK = "\u2713"  # check mark


def features_table(result: AnalysisResult, cells: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-cell features shown in napari (one row per cell, in ``cell_id`` order).

    ``cells``: the review table (:attr:`napari_ddrnet.review.ReviewSession.cells`) to show
    instead of ``result.cells``; without it the review columns say "not reviewed".
    """
    table = with_review_defaults(result.cells if cells is None else cells)
    return table.reindex(columns=[*feature_columns(result.classes), *REVIEW_COLUMNS]) \
        .reset_index(drop=True)


def cell_text(feats: pd.DataFrame) -> list[str]:
    """Canvas text per cell: ``class confidence``, or ``class ✓`` once a person reviewed it."""
    return [f"{c} {REVIEWED_MARK}" if rev else f"{c} {conf:.2f}"
            for c, conf, rev in zip(feats["class"], feats["confidence"], feats["reviewed"],
                                    strict=True)]


def _text(feats: pd.DataFrame, size: float) -> dict:
    # A per-cell string array (napari's manual string encoding): the text depends on the review.
    return {"string": {"array": cell_text(feats), "default": ""}, "size": 10,
            "color": "white", "anchor": "upper_left", "translation": (-size, 0)}


def update_review(layers: dict, feats: pd.DataFrame, highlight_row: int | None = None) -> None:
    """Refresh our layers in place after a review change: features, colours, text, highlight.

    ``layers`` maps layer names (:data:`OUR_LAYERS`) to the napari layers present (a deleted
    layer is simply absent); ``feats`` is :func:`features_table` of the session's cells;
    ``highlight_row`` thickens that cell's box (the gallery's current cell).
    """
    colors = [class_color(c) for c in feats["class"]]
    if LABELS_NAME in layers:
        layers[LABELS_NAME].features = label_features(feats)
    pts = layers.get(POINTS_NAME)
    if pts is not None and len(pts.data) == len(feats):
        pts.features = feats
        if len(feats):
            pts.face_color = colors
        pts.text = _text(feats, float(pts.metadata.get("text_offset", 10.0)))
    boxes = layers.get(SHAPES_NAME)
    if boxes is not None and boxes.nshapes == len(feats):
        boxes.features = feats
        if len(feats):
            boxes.edge_color = colors
    set_highlight(layers, len(feats), highlight_row)


def set_highlight(layers: dict, n: int, row: int | None) -> None:
    """Thicken the box and the point border of cell ``row`` (``None``: no cell); only the
    widths change, so moving through the gallery does not rebuild colours or text."""
    pts = layers.get(POINTS_NAME)
    if pts is not None and len(pts.data) == n:
        width = np.full(n, 0.1)
        if row is not None:
            width[row] = 0.35
        pts.border_width = width
    boxes = layers.get(SHAPES_NAME)
    if boxes is not None and boxes.nshapes == n and n:
        widths = [EDGE_WIDTH] * n
        if row is not None:
            widths[row] = HIGHLIGHT_EDGE_WIDTH
        boxes.edge_width = widths


def label_features(feats: pd.DataFrame) -> pd.DataFrame:
    """Features for a Labels layer: napari maps label value ``k`` to row ``k`` unless an
    ``index`` column names the label of each row; label ``cell_id`` is that cell's mask."""
    out = feats.copy()
    out.insert(0, "index", out["cell_id"].astype(np.int64))
    return out


def labels_layer_data(labels) -> tuple[object, bool]:
    """``(data, multiscale)`` for a Labels layer: a numpy label image as is; a label store on
    disk (anything with ``dask_levels()``, e.g. :class:`~napari_ddrnet.label_store.
    LabelPyramid`) as its lazy dask levels, so napari reads only the chunks it draws."""
    levels = getattr(labels, "dask_levels", None)
    if levels is None:
        return labels, False
    levels = levels()
    return (levels, True) if len(levels) > 1 else (levels[0], False)


def layer_data(result: AnalysisResult, scale: tuple[float, float] = (1.0, 1.0),
               translate: tuple[float, float] = (0.0, 0.0),
               cells: pd.DataFrame | None = None,
               labels_offset: tuple[int, int] = (0, 0),
               units: tuple | None = None) -> list[tuple]:
    """napari ``LayerDataTuple`` list: Labels (masks), Points (centroids), Shapes (boxes).

    ``cells``: the review table to show (see :func:`features_table`). ``labels_offset``: image
    pixel of the label image's top-left corner when it covers only a region of the image
    (points and boxes are always in image pixels). ``units``: the image layer's (e.g. µm from a
    calibrated TIFF), so napari sees one unit across layers and keeps its scale bar in µm.
    """
    feats = features_table(result, cells)
    colors = [class_color(c) for c in feats["class"]]
    common = {"scale": scale, "translate": translate}
    if units is not None:
        common["units"] = units
    out: list[tuple] = []
    if result.labels is not None:
        data, multiscale = labels_layer_data(result.labels)
        shift = tuple(float(t) + float(o) * float(s)
                      for t, o, s in zip(translate, labels_offset, scale, strict=True))
        out.append((data, {"name": LABELS_NAME, "opacity": 0.35, "multiscale": multiscale,
                           "features": label_features(feats), "scale": scale,
                           "translate": shift,
                           **({"units": units} if units is not None else {})}, "labels"))
    cells = result.cells
    centroids = cells[["centroid_row", "centroid_col"]].to_numpy(float).reshape(-1, 2)
    size = float(np.median(np.maximum(cells["max_row"] - cells["min_row"],
                                      cells["max_col"] - cells["min_col"]))) / 6 \
        if len(cells) else 10.0
    out.append((centroids, {
        "name": POINTS_NAME, "features": feats, "face_color": colors or "white",
        "border_color": "black", "size": max(size, 4.0), "border_width": 0.1,
        "text": _text(feats, size), "metadata": {"text_offset": size},
        **common}, "points"))
    # napari puts pixel centres on integer coordinates: a box over pixels r0..r1-1 runs from
    # the top edge of r0 (r0 - 0.5) to the bottom edge of r1 - 1 (r1 - 0.5).
    boxes = [np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float) - 0.5
             for r0, c0, r1, c1 in cells[list(BOX_COLUMNS)].to_numpy()]
    out.append((boxes, {
        "name": SHAPES_NAME, "shape_type": "rectangle", "features": feats,
        "edge_color": colors or "white", "face_color": "transparent", "edge_width": EDGE_WIDTH,
        **common}, "shapes"))
    return out
