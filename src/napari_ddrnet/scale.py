"""Pixel size: read it from metadata, or estimate it from the red cells of the field itself.

A normal red cell is about 7.5 µm across in every smear, which makes it a built-in ruler when a
file carries no calibration.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import feature, filters, measure, transform

#: Diameter of a normal red cell, micrometres.
RBC_DIAMETER_UM = 7.5
#: Used when a field holds too few red cells to measure (typical 100x oil objective + camera).
FALLBACK_PIXEL_SIZE_UM = 0.1


def red_cell_diameter_px(rgb: np.ndarray, quantile: float = 90.0) -> float | None:
    """Median red-cell diameter in pixels, or ``None`` when fewer than 3 cells are measurable.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(H, W, 3) uint8`` image.
    quantile : float
        Percentile of the distance-transform peak radii taken as the typical cell radius.

    Notes
    -----
    Cells absorb green light, the background does not; the inscribed radius of each cell is a
    peak of the distance transform of the filled foreground, which stays right for cells that
    touch (each keeps its own peak) and ignores the pale central pallor (holes are filled).
    """
    scale = min(1.0, 320.0 / max(rgb.shape[:2]))
    green = rgb[..., 1].astype(np.float32)
    if scale < 1.0:
        green = transform.rescale(green, scale, anti_aliasing=True, preserve_range=True)
    white = float(np.percentile(green, 95))
    if white <= 1.0:
        return None
    dark = 1.0 - green / white
    dark = filters.gaussian(dark, sigma=1.0, preserve_range=True)
    if float(dark.max() - dark.min()) < 0.05:
        return None
    fg = dark > max(float(filters.threshold_otsu(dark)), 0.04)
    fg = ndi.binary_fill_holes(ndi.binary_opening(fg, iterations=1))
    hull_d = _round_cell_hull_diameter(fg)
    dist = ndi.distance_transform_edt(fg)
    peaks = feature.peak_local_max(dist, min_distance=2, threshold_abs=1.5, exclude_border=True)
    if len(peaks) < 3:
        return None
    radii = dist[peaks[:, 0], peaks[:, 1]]
    # Peaks in the bridges between touching cells are small; the top decile sits at centres.
    radius = float(np.percentile(radii, quantile))
    # Red cells with a pale, open-ringed centre defeat hole filling and shrink every peak; the
    # convex hull of isolated round cells is immune to that, so the larger estimate wins.
    return max(2.0 * radius, hull_d or 0.0) / scale


def _round_cell_hull_diameter(fg: np.ndarray) -> float | None:
    """Median outer diameter of isolated, round foreground objects (or ``None``).

    A round object's bounding-box side is its diameter, pale centre or not; objects whose box is
    not square or that fill too little of it (clumps, crescents) are skipped. Only boxes and
    areas are measured (no per-object convex hulls), which keeps this a few milliseconds.
    """
    closed = ndi.binary_fill_holes(ndi.binary_closing(fg, iterations=2))
    labels = measure.label(closed)
    h, w = labels.shape
    t = measure.regionprops_table(labels, properties=("bbox", "area"))
    bh = t["bbox-2"] - t["bbox-0"]
    bw = t["bbox-3"] - t["bbox-1"]
    side = (bh + bw) / 2.0
    ok = ((side >= 6) & (bh <= 1.25 * bw) & (bw <= 1.25 * bh)
          & (t["area"] >= 0.6 * bh * bw)  # a filled disk covers pi/4 = 0.79 of its box
          & (t["bbox-0"] > 0) & (t["bbox-1"] > 0) & (t["bbox-2"] < h) & (t["bbox-3"] < w))
    return float(np.median(side[ok])) if ok.sum() >= 3 else None


def estimate_pixel_size(rgb: np.ndarray) -> float:
    """Estimate micrometres per pixel from the median red-cell diameter.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(H, W, 3) uint8`` image.

    Returns
    -------
    float
        Micrometres per pixel; :data:`FALLBACK_PIXEL_SIZE_UM` when no red cells are found.
    """
    d = red_cell_diameter_px(rgb)
    if d is None or d < 4:
        return FALLBACK_PIXEL_SIZE_UM
    return RBC_DIAMETER_UM / d

