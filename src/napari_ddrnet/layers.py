"""Build napari layer data from an analysis result (pure: no Qt, no viewer).

Every layer carries the same per-cell ``features`` table, so clicking a point, a box or a mask
shows the class, the confidence and the per-class probabilities.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .classes import class_color
from .pipeline import AnalysisResult
from .schema import feature_columns

LABELS_NAME = "WBC masks"
POINTS_NAME = "WBC classes"
SHAPES_NAME = "WBC boxes"
OUR_LAYERS = (LABELS_NAME, POINTS_NAME, SHAPES_NAME)


def features_table(result: AnalysisResult) -> pd.DataFrame:
    """Per-cell features shown in napari (one row per cell, in ``cell_id`` order)."""
    return result.cells.reindex(columns=feature_columns(result.classes)).reset_index(drop=True)


def label_features(feats: pd.DataFrame) -> pd.DataFrame:
    """Features for a Labels layer: napari maps label value ``k`` to row ``k`` unless an
    ``index`` column names the label of each row; label ``cell_id`` is that cell's mask."""
    out = feats.copy()
    out.insert(0, "index", out["cell_id"].astype(np.int64))
    return out


def layer_data(result: AnalysisResult, scale: tuple[float, float] = (1.0, 1.0),
               translate: tuple[float, float] = (0.0, 0.0)) -> list[tuple]:
    """napari ``LayerDataTuple`` list: Labels (masks), Points (centroids), Shapes (boxes)."""
    feats = features_table(result)
    colors = [class_color(c) for c in feats["class"]]
    common = {"scale": scale, "translate": translate}
    out: list[tuple] = []
    if result.labels is not None:
        out.append((result.labels, {"name": LABELS_NAME, "opacity": 0.35,
                                    "features": label_features(feats),
                                    **common}, "labels"))
    cells = result.cells
    centroids = cells[["centroid_row", "centroid_col"]].to_numpy(float).reshape(-1, 2)
    size = float(np.median(np.maximum(cells["max_row"] - cells["min_row"],
                                      cells["max_col"] - cells["min_col"]))) / 6 \
        if len(cells) else 10.0
    out.append((centroids, {
        "name": POINTS_NAME, "features": feats, "face_color": colors or "white",
        "border_color": "black", "size": max(size, 4.0),
        "text": {"string": "{class} {confidence:.2f}", "size": 10, "color": "white",
                 "anchor": "upper_left", "translation": (-size, 0)},
        **common}, "points"))
    boxes = [np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float)
             for r0, c0, r1, c1 in cells[["min_row", "min_col", "max_row", "max_col"]]
             .to_numpy()]
    out.append((boxes, {
        "name": SHAPES_NAME, "shape_type": "rectangle", "features": feats,
        "edge_color": colors or "white", "face_color": "transparent", "edge_width": 3,
        **common}, "shapes"))
    return out
