"""Counting regions: analyse part of an image and bring the result back to image coordinates.

Qt-free geometry behind the widget's "Analyse" choice. A :class:`Region` is the pixel box that
is actually read and analysed (a lazy slice of the image) plus, optionally, the polygons a cell's
centroid must lie in to be counted (a user-drawn counting area). :func:`restrict_result` turns
the analysis of the box into a result in image pixels holding only the region's cells.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from .report import counts_table

#: Geometry columns shifted by the region's top-left corner.
_ROW_COLUMNS = ("centroid_row", "min_row", "max_row")
_COL_COLUMNS = ("centroid_col", "min_col", "max_col")
#: Shapes types that enclose an area (lines and paths do not).
AREA_SHAPES = ("rectangle", "polygon", "ellipse")


class RegionError(ValueError):
    """A region that cannot be analysed, with a message meant for the user."""


@dataclass(frozen=True)
class Region:
    """The part of an image to analyse.

    Attributes
    ----------
    box : tuple of int
        ``(row0, col0, row1, col1)`` in full-resolution image pixels, max exclusive, clipped to
        the image: what is read and analysed.
    polygons : tuple of numpy.ndarray
        ``(N, 2)`` (row, col) vertices in image pixels; when present only cells whose centroid
        lies inside one of them are kept (empty: every cell of the box).
    description : str
        What was analysed, for the status line (e.g. ``"Shapes region 'area' (2 shapes)"``).
    whole : bool
        The box is the whole image and there are no polygons (the result needs no change).
    """

    box: tuple[int, int, int, int]
    polygons: tuple[np.ndarray, ...] = field(default=())
    description: str = "whole image"
    whole: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the box."""
        r0, c0, r1, c1 = self.box
        return r1 - r0, c1 - c0

    @property
    def offset(self) -> tuple[int, int]:
        """Image pixel of the box's top-left corner."""
        return self.box[0], self.box[1]

    def slice_of(self, image):
        """The box of ``image`` (a view or a lazy slice: nothing is read here)."""
        if self.whole:
            return image
        r0, c0, r1, c1 = self.box
        return image[r0:r1, c0:c1]

    def key_suffix(self) -> str:
        """A short hash of the box and polygons (keeps reviews of different regions apart)."""
        digest = hashlib.sha256(repr(self.box).encode())
        for poly in self.polygons:
            digest.update(np.round(np.asarray(poly, float), 2).tobytes())
        return digest.hexdigest()[:12]


def whole_image(shape: tuple[int, ...]) -> Region:
    """The region covering all of an image of ``shape`` (rows, cols first)."""
    h, w = int(shape[0]), int(shape[1])
    return Region((0, 0, h, w), description="whole image", whole=True)


def box_region(lo, hi, shape: tuple[int, ...], description: str = "box") -> Region:
    """The pixels covered by the box from ``lo`` to ``hi`` (row, col; floats allowed).

    napari puts pixel centres on integer coordinates, so pixel ``k`` spans ``k - 0.5 ..
    k + 0.5``; every pixel the box touches is included, clipped to the image.

    Raises
    ------
    RegionError
        When the box misses the image.
    """
    h, w = int(shape[0]), int(shape[1])
    (a, b), (c, d) = np.minimum(lo, hi), np.maximum(lo, hi)
    r0, c0 = max(0, int(np.floor(a + 0.5))), max(0, int(np.floor(b + 0.5)))
    r1, c1 = min(h, int(np.ceil(c + 0.5))), min(w, int(np.ceil(d + 0.5)))
    if r1 <= r0 or c1 <= c0:
        raise RegionError(f"The {description} does not overlap the image ({h}x{w} px).")
    return Region((r0, c0, r1, c1), description=description)


def polygon_region(polygons, shape: tuple[int, ...], description: str = "region") -> Region:
    """The bounding box of ``polygons`` (``(N, 2)`` row/col vertices in image pixels), keeping
    the polygons so that only cells whose centroid is inside one of them are counted."""
    polys = tuple(np.asarray(p, float).reshape(-1, 2) for p in polygons)
    polys = tuple(p for p in polys if len(p) >= 3)
    if not polys:
        raise RegionError("The Shapes layer has no rectangle, polygon or ellipse: draw the "
                          "counting area first.")
    pts = np.concatenate(polys)
    region = box_region(pts.min(axis=0), pts.max(axis=0), shape, description)
    return replace(region, polygons=polys)


def shape_polygon(vertices, shape_type: str, n: int = 64) -> np.ndarray | None:
    """The outline of one napari shape as an ``(N, 2)`` polygon, ``None`` for lines/paths.

    napari stores an ellipse as the four corners of its bounding rectangle (possibly rotated);
    its outline is sampled with ``n`` vertices.
    """
    v = np.asarray(vertices, float)[:, -2:]
    if shape_type not in AREA_SHAPES or len(v) < 3:
        return None
    if shape_type == "ellipse":
        centre = v.mean(axis=0)
        u, w = (v[1] + v[2]) / 2 - centre, (v[2] + v[3]) / 2 - centre
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)[:, None]
        return centre + np.cos(t) * u + np.sin(t) * w
    return v


def inside_polygons(points, polygons) -> np.ndarray:
    """Which ``(row, col)`` points lie inside at least one polygon (all, without polygons)."""
    from skimage.measure import points_in_poly

    pts = np.asarray(points, float).reshape(-1, 2)
    if not len(polygons):
        return np.ones(len(pts), bool)
    keep = np.zeros(len(pts), bool)
    for poly in polygons:
        if len(pts):
            keep |= points_in_poly(pts, np.asarray(poly, float))
    return keep


def view_box(center, zoom: float, canvas_size) -> tuple[np.ndarray, np.ndarray]:
    """World ``(row, col)`` corners of what a 2D canvas shows.

    ``center``: the camera centre (world units, last two entries used); ``zoom``: screen pixels
    per world unit; ``canvas_size``: ``(height, width)`` in screen pixels.
    """
    c = np.asarray(center, float)[-2:]
    half = np.asarray(canvas_size, float)[-2:] / (2.0 * float(zoom))
    return c - half, c + half


def offset_cells(cells: pd.DataFrame, row: int, col: int) -> pd.DataFrame:
    """``cells`` with centroids and boxes shifted by ``(row, col)`` pixels."""
    out = cells.copy()
    for cols, off in ((_ROW_COLUMNS, row), (_COL_COLUMNS, col)):
        for name in cols:
            if name in out:
                out[name] = out[name] + off
    return out


def cells_kept(cells, region: Region) -> np.ndarray:
    """Which of the cells found in ``region``'s box (box coordinates, in the order found)
    :func:`restrict_result` keeps: those whose centroid lies inside a polygon (all of them
    for a box or the whole image)."""
    if region.whole or not region.polygons:
        return np.ones(len(cells), bool)
    moved = offset_cells(cells, *region.offset)
    return inside_polygons(moved[["centroid_row", "centroid_col"]].to_numpy(float),
                           region.polygons)


def restrict_result(result, region: Region):
    """The analysis of ``region``'s box as a result in image pixels, with its cells only.

    Cells are shifted to image coordinates; with polygons, only cells whose centroid is inside
    one are kept and renumbered ``1..n`` (in the order found), the counts recomputed and the
    label image relabelled to match (the dropped cells' masks removed): a numpy label image in
    memory, or a :class:`~napari_ddrnet.label_store.LabelPyramid` chunk by chunk on disk. The
    label image stays the size of the box (show it translated by :attr:`Region.offset`).
    ``touches_border`` refers to the box: a cell cut by the box edge touches it.
    """
    if region.whole:
        return result
    cells = offset_cells(result.cells, *region.offset)
    if not region.polygons:
        return replace(result, cells=cells)
    keep = cells_kept(result.cells, region)
    old_ids = cells["cell_id"].to_numpy(np.int64)
    cells = cells[keep].reset_index(drop=True)
    new_ids = np.arange(1, len(cells) + 1)
    lut = np.zeros(int(old_ids.max(initial=0)) + 1, np.int32)
    lut[old_ids[keep]] = new_ids
    cells["cell_id"] = new_ids.astype(cells["cell_id"].dtype)
    labels = result.labels
    if labels is not None:
        if isinstance(labels, np.ndarray):
            labels = lut[labels]
        else:
            labels.relabel(lut)
    crops = result.crops[keep] if result.crops is not None else None
    return replace(result, cells=cells, counts=counts_table(cells["class"]), labels=labels,
                   crops=crops)


__all__ = ["AREA_SHAPES", "Region", "RegionError", "box_region", "cells_kept", "inside_polygons",
           "offset_cells", "polygon_region", "restrict_result", "shape_polygon", "view_box",
           "whole_image"]
