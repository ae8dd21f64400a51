"""Square cell crops at a fixed physical field of view — shared by training and inference.

The crop spans a fixed number of micrometres whatever the magnification (the model's
``crop_fov_um``, from its weights card; :data:`CROP_FOV_UM` for new training packs), the field of
view of the PBC (CellaVision) images the model learns from, so a lymphocyte stays smaller than a
monocyte in the crop exactly as in the training data; it widens only when a cell is bigger than
that field. Pixels outside the image are filled with the slide's background colour.
"""

from __future__ import annotations

import numpy as np
from skimage import transform

#: Physical width of a field crop for new training packs, micrometres: what the centre square of
#: a PBC (CellaVision DM96) image spans, 360 px at the 0.1065 µm/px the plugin's red-cell
#: estimator reads on PBC (benchmarks/results/crop_scale.log), so that a cell is as large in a
#: field crop as in a PBC training crop. Models trained before 2026-12-02 used 30 µm; every
#: model's own value is in its weights card and is what the plugin crops at.
CROP_FOV_UM = 38.0
#: Never cut a cell: the crop is at least this many times its bounding-box side.
MIN_CELL_MARGIN = 1.15
#: Input side of the model, pixels.
INPUT_SIZE = 64


def background_color(image: np.ndarray) -> np.ndarray:
    """Slide background colour: per-channel 95th percentile of a pixel subsample."""
    flat = image.reshape(-1, image.shape[-1])
    step = max(1, flat.shape[0] // 20000)
    return np.percentile(flat[::step], 95, axis=0).astype(np.uint8)


def crop_square(
    image: np.ndarray,
    center_rc: tuple[float, float],
    side: float,
    out_size: int = INPUT_SIZE,
    fill: np.ndarray | None = None,
) -> np.ndarray:
    """Cut a square of ``side`` pixels centred on ``center_rc`` and resize it to ``out_size``.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, 3) uint8`` image.
    center_rc : tuple of float
        Centre (row, col) in pixels.
    side : float
        Side of the square in pixels (at least 2).
    out_size : int
        Output side in pixels.
    fill : numpy.ndarray, optional
        RGB colour for the parts outside the image; default: :func:`background_color`.

    Returns
    -------
    numpy.ndarray
        ``(out_size, out_size, 3) uint8``.
    """
    side_i = max(2, int(round(side)))
    r0 = int(round(center_rc[0] - side_i / 2))
    c0 = int(round(center_rc[1] - side_i / 2))
    h, w = image.shape[:2]
    rr0, cc0 = max(r0, 0), max(c0, 0)
    rr1, cc1 = min(r0 + side_i, h), min(c0 + side_i, w)
    if rr0 == r0 and cc0 == c0 and rr1 == r0 + side_i and cc1 == c0 + side_i:
        window = image[r0:r0 + side_i, c0:c0 + side_i]
    else:
        if fill is None:
            fill = background_color(image)
        window = np.empty((side_i, side_i, image.shape[2]), image.dtype)
        window[:] = fill
        if rr1 > rr0 and cc1 > cc0:
            window[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = image[rr0:rr1, cc0:cc1]
    if side_i == out_size:
        return np.ascontiguousarray(window)
    out = transform.resize(window, (out_size, out_size), order=1,
                           anti_aliasing=side_i > out_size, preserve_range=True)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def cell_crop_side(bbox_side_px: float, pixel_size_um: float,
                   fov_um: float = CROP_FOV_UM) -> float:
    """Crop side in pixels for a cell whose bounding box is ``bbox_side_px`` on its long side."""
    return max(fov_um / pixel_size_um, MIN_CELL_MARGIN * bbox_side_px)


def crop_cells(
    image: np.ndarray,
    cells,
    pixel_size_um: float,
    out_size: int = INPUT_SIZE,
    fill=None,
    fov_um: float = CROP_FOV_UM,
) -> np.ndarray:
    """Crops for every row of a per-cell table (see :func:`napari_ddrnet.segment.segment_wbc`).

    ``fill`` is the background colour outside the image (default: :func:`background_color`);
    the pipeline passes the whole image's white point so every tile pads alike. ``out_size`` and
    ``fov_um`` must be the model's (its weights card carries them; see
    :class:`napari_ddrnet.weights.ModelBundle`).

    Returns
    -------
    numpy.ndarray
        ``(N, out_size, out_size, 3) uint8``; ``N = len(cells)``.
    """
    n = len(cells)
    out = np.empty((n, out_size, out_size, 3), np.uint8)
    if n == 0:
        return out
    if fill is None:
        fill = background_color(image)
    fill = np.clip(np.round(np.asarray(fill, float)), 0, 255).astype(np.uint8)
    sides = np.maximum(cells["max_row"] - cells["min_row"], cells["max_col"] - cells["min_col"])
    for i, (r, c, s) in enumerate(zip(cells["centroid_row"], cells["centroid_col"], sides)):
        out[i] = crop_square(image, (r, c), cell_crop_side(float(s), pixel_size_um, fov_um),
                             out_size, fill)
    return out


def crop_centre(image: np.ndarray, out_size: int = INPUT_SIZE) -> np.ndarray:
    """The centred square of a single-cell image (PBC/CellaVision style) at ``out_size``."""
    h, w = image.shape[:2]
    return crop_square(image, (h / 2, w / 2), min(h, w), out_size)
