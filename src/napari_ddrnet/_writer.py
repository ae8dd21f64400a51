"""napari writers: a Points or Shapes layer and its per-cell features to CSV (atomically)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .report import write_csv_atomic


def _features(attributes: dict, n: int) -> pd.DataFrame:
    feats = attributes.get("features")
    if feats is None or len(feats) != n:
        return pd.DataFrame(index=range(n))
    return pd.DataFrame(feats).reset_index(drop=True)


def write_points(path: str, data: Any, attributes: dict) -> list[str]:
    """Write one row per point: the features, then ``centroid_row``/``centroid_col`` (pixels)."""
    pts = np.asarray(data, float).reshape(-1, 2)
    df = _features(attributes, len(pts))
    df["centroid_row"], df["centroid_col"] = pts[:, 0], pts[:, 1]
    return [str(write_csv_atomic(df, path))]


def write_shapes(path: str, data: Any, attributes: dict) -> list[str]:
    """Write one row per shape: the features, then its bounding box (max exclusive)."""
    shapes = [np.asarray(s, float) for s in data]
    df = _features(attributes, len(shapes))
    # Vertices lie on pixel edges (see layers.layer_data): +0.5 gives pixel indices back.
    bb = np.array([[s[:, 0].min(), s[:, 1].min(), s[:, 0].max(), s[:, 1].max()]
                   for s in shapes]).reshape(-1, 4) + 0.5
    for i, col in enumerate(("min_row", "min_col", "max_row", "max_col")):
        df[col] = bb[:, i]
    return [str(write_csv_atomic(df, path))]
