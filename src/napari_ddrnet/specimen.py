"""What in an image is not stained specimen: black fill, masks, an eyepiece's dark rim.

Rotated or padded images (the Kaggle copies of BCCD, resized BCD fields), masked exports and
photographs through the eyepiece (Raabin-WBC) carry pixels that are near black in every
channel. They are not cells: the segmentation gives them no nucleus signal, and the red-cell
ruler treats them as background. One rule serves both (:func:`not_specimen`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Pixels darker than this fraction of the background in every channel are not specimen: the
#: black fill of a rotated or padded image, a mask or the dark rim of an eyepiece's field of
#: view. No stained nucleus gets near it (its brightest channel stays above 0.38x the
#: background on BCCD, BCD, PBC and Raabin-WBC fields, benchmarks/results/not_specimen.log),
#: but pure black has the largest optical density of all and would read as the strongest
#: nucleus, and as a huge dark "cell" to the red-cell ruler.
NOT_SPECIMEN_FRACTION = 0.15
#: The not-specimen mask is widened by this many pixels, for the JPEG blend at its edge.
NOT_SPECIMEN_MARGIN_PX = 3
#: Image border, in pixels, that is not read as specimen either: resized or re-encoded fields
#: (BCD) often carry a coloured or black line along it. The segmentation crops it from its
#: statistics and replicates the pixels next to it; the red-cell ruler leaves it out of the
#: not-specimen mask (it is no black fill, and the ruler drops cells cut by a window's edge).
BORDER_PX = 2


def channel_max(rgb: np.ndarray) -> np.ndarray:
    """The largest channel value of each pixel of ``(H, W, C)`` ``rgb``: ``rgb.max(axis=-1)``,
    bit for bit (NaN included), but as C-1 elementwise maxima over whole planes: 20-26x faster
    than numpy's reduction over a short last axis on a 640x480 field (7.2 against 0.3 ms;
    ``docs/results/channel_max_2026-12-07/time.log``)."""
    out = np.array(rgb[..., 0], copy=True)
    for c in range(1, rgb.shape[-1]):
        np.maximum(out, rgb[..., c], out=out)
    return out


def not_specimen(rgb: np.ndarray, white, border_px: int = 0) -> np.ndarray | None:
    """Mask of the pixels that are not stained specimen.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(H, W, 3)`` image, any numeric dtype.
    white : array-like
        The background colour (per channel), in the units of ``rgb``.
    border_px : int
        Dark pixels this close to the edge of ``rgb`` do not count (a line along the border
        of a resized field, see :data:`BORDER_PX`); the widened mask may still reach them.

    Returns
    -------
    numpy.ndarray or None
        Pixels darker than :data:`NOT_SPECIMEN_FRACTION` x the mean of ``white`` in every
        channel, widened by :data:`NOT_SPECIMEN_MARGIN_PX`; ``None`` when there are none (the
        usual case).
    """
    dark = channel_max(rgb) < NOT_SPECIMEN_FRACTION * float(np.mean(white))
    if border_px > 0 and min(dark.shape) > 2 * border_px:
        inner = np.zeros_like(dark)
        inner[border_px:-border_px, border_px:-border_px] = True
        dark &= inner
    if not dark.any():
        return None
    return ndi.binary_dilation(dark, iterations=NOT_SPECIMEN_MARGIN_PX)
