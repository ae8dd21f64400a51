"""Single-cell images: one row per image, the way analysers export their cells.

CellaVision-like analysers (and the PBC and LISC sets) export each white cell as its own small
image with the cell in the centre. Such an image is classified whole: its centred square is the
crop, exactly as the PBC training crops were cut (:func:`napari_ddrnet.crop.crop_centre`), so
the result does not depend on a pixel size that a single-cell image rarely lets us measure. The
segmentation only supplies the row's geometry: the box of the cell found nearest the centre, or
the whole image when none is found.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .classes import DEFAULT_MIN_CONFIDENCE
from .classify import Classifier, check_min_confidence, probabilities_to_table
from .crop import crop_centre
from .image_input import check_has_colour, to_rgb_uint8
from .report import counts_table
from .scale import PixelSize, resolve_pixel_size
from .schema import CROP_SINGLE_CELL, GEOMETRY_COLUMNS, with_geometry_dtypes
from .segment import segment_wbc

#: Largest side accepted as one cell's image; anything bigger is a field, not an export.
MAX_SINGLE_CELL_SIDE = 1024


@dataclass
class SingleCell:
    """One single-cell image, cut and measured, before classification."""

    geometry: pd.DataFrame  # one row, GEOMETRY_COLUMNS
    crop: np.ndarray  # (S, S, 3) uint8
    pixel_size: PixelSize
    found: bool  # a cell was segmented (else the row is the whole image)


def image_pixel_size(image, pixel_size_um: float | None = None,
                     pixel_size_metadata: float | None = None) -> PixelSize:
    """A single-cell image's own pixel size (given > metadata > estimated > default)."""
    rgb = _single_cell_rgb(image)
    return resolve_pixel_size(rgb, given=pixel_size_um, metadata=pixel_size_metadata)


def _single_cell_rgb(image) -> np.ndarray:
    """``image`` as RGB uint8, refused when too large to be one cell or without colour."""
    from .image_input import ImageInputError

    h, w = np.shape(image)[:2] if not hasattr(image, "shape") else image.shape[:2]
    if max(h, w) > MAX_SINGLE_CELL_SIDE:  # checked before anything is read
        raise ImageInputError(
            f"{h}x{w} px is too large for a single-cell image (at most "
            f"{MAX_SINGLE_CELL_SIDE} px a side): analyse it as a field instead.")
    rgb = to_rgb_uint8(np.asarray(image))
    check_has_colour(rgb)
    return rgb


def prepare_single_cell(image, input_size: int, pixel_size_um: float | None = None,
                        pixel_size_metadata: float | None = None,
                        pixel_size: PixelSize | None = None) -> SingleCell:
    """Crop and geometry of a single-cell image.

    Parameters
    ----------
    image : array-like
        ``(H, W, 3)`` RGB (other pixel types are converted), at most
        :data:`MAX_SINGLE_CELL_SIDE` on its long side.
    input_size : int
        The model's input side (from its weights card).
    pixel_size_um, pixel_size_metadata : float, optional
        As for :func:`napari_ddrnet.pipeline.analyze`; used for the areas in µm² and for the
        segmentation that finds the centre cell's box.
    pixel_size : PixelSize, optional
        Decided already (e.g. a folder's :func:`~napari_ddrnet.scale.pooled_pixel_size`): used
        as it is.

    Raises
    ------
    napari_ddrnet.image_input.ImageInputError
        For images that cannot be analysed, or too large to be one cell.
    """
    rgb = _single_cell_rgb(image)
    h, w = rgb.shape[:2]
    px = pixel_size or resolve_pixel_size(rgb, given=pixel_size_um, metadata=pixel_size_metadata)
    cells = segment_wbc(rgb, px.um, pixel_size_source=px.source).cells
    found = len(cells) > 0
    if found:
        d2 = (cells["centroid_row"] - h / 2) ** 2 + (cells["centroid_col"] - w / 2) ** 2
        row = cells.iloc[[int(np.argmin(d2.to_numpy()))]].copy()
    else:
        row = pd.DataFrame([{"centroid_row": (h - 1) / 2, "centroid_col": (w - 1) / 2,
                             "min_row": 0, "min_col": 0, "max_row": h, "max_col": w,
                             "area_px": h * w, "nucleus_area_px": 0,
                             "area_um2": h * w * px.um ** 2, "nucleus_area_um2": 0.0,
                             "touches_border": True}])
    row["cell_id"] = 1
    geometry = with_geometry_dtypes(row.reindex(columns=GEOMETRY_COLUMNS).reset_index(drop=True))
    return SingleCell(geometry, crop_centre(rgb, input_size), px, found)


def classify_single_cells(items: Iterable[SingleCell], classifier: Classifier,
                          min_confidence: float = DEFAULT_MIN_CONFIDENCE):
    """Classify prepared single cells in batches; yields ``(SingleCell, AnalysisResult)``.

    Crops are classified ``classifier.batch_size`` at a time, so a folder of thousands of
    exports costs a few forward passes and bounded memory.
    """
    from .pipeline import AnalysisResult

    check_min_confidence(min_confidence)
    for batch in _batches(items, classifier.batch_size):
        probs = classifier.predict_proba(np.stack([c.crop for c in batch]))
        for cell, p in zip(batch, probs):
            pred = probabilities_to_table(p[None], classifier.classes, min_confidence)
            table = pd.concat([cell.geometry, pred], axis=1).assign(crop_mode=CROP_SINGLE_CELL)
            yield cell, AnalysisResult(table, counts_table(table["class"]), None,
                                       cell.pixel_size, tuple(classifier.classes),
                                       crops=cell.crop[None])


def analyze_single_cell(image, pixel_size_um: float | None = None,
                        classifier: Classifier | None = None, *,
                        pixel_size_metadata: float | None = None,
                        min_confidence: float = DEFAULT_MIN_CONFIDENCE,
                        device: str = "auto"):
    """Classify a single-cell image (one centred cell) as one row.

    Returns
    -------
    napari_ddrnet.pipeline.AnalysisResult
        ``cells`` has exactly one row; ``labels`` is ``None``.
    """
    classifier = classifier or Classifier(device=device)
    cell = prepare_single_cell(image, classifier.input_size, pixel_size_um, pixel_size_metadata)
    return next(classify_single_cells([cell], classifier, min_confidence))[1]


def looks_like_single_cell(shape: tuple[int, ...], cells: pd.DataFrame) -> bool:
    """Whether a field analysis suggests the image is a single-cell export.

    True for a small image whose largest detected white cell sits near its centre and fills a
    good part of it (a PBC/LISC/CellaVision export; neighbours cut by the border may be
    present), so the widget can propose the single-cell mode. Only a hint: a small field with
    one central white cell looks the same.
    """
    h, w = shape[:2]
    if max(h, w) > MAX_SINGLE_CELL_SIDE or len(cells) == 0:
        return False
    sides = np.maximum(cells["max_row"] - cells["min_row"], cells["max_col"] - cells["min_col"])
    c = cells.iloc[int(np.argmax(sides.to_numpy()))]
    centred = (abs(c["centroid_row"] - h / 2) < 0.2 * h
               and abs(c["centroid_col"] - w / 2) < 0.2 * w)
    return bool(centred and sides.max() >= 0.3 * min(h, w))


def _batches(items: Iterable[SingleCell], size: int) -> Iterator[list[SingleCell]]:
    batch: list[SingleCell] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


__all__ = ["analyze_single_cell", "classify_single_cells", "looks_like_single_cell",
           "prepare_single_cell"]
