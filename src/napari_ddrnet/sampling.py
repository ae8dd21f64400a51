"""Read a few windows of an image, in memory or lazy, without touching the rest of it.

Whole-slide images opened through dask or zarr can be 100k x 60k pixels; statistics that only
need a sample (pixel size, colour of the background) read a handful of windows instead.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

Box = tuple[int, int, int, int]


def window_grid(shape: tuple[int, ...], n: int = 9, side: int = 1024) -> list[Box]:
    """Up to ``n`` windows ``(row0, col0, row1, col1)`` on a regular grid, centred ones first.

    Parameters
    ----------
    shape : tuple of int
        Image shape; only the first two entries (rows, cols) are used.
    n : int
        Maximum number of windows.
    side : int
        Window side in pixels; clipped to the image, so a small image gives one window: itself.

    Returns
    -------
    list of tuple
        Window bounds (max exclusive), nearest to the image centre first.
    """
    h, w = int(shape[0]), int(shape[1])
    sh, sw = min(side, h), min(side, w)
    per_axis = max(1, math.ceil(math.sqrt(n)))
    # No more windows along an axis than fit side by side, so that a slightly larger image
    # does not yield near-copies of the same window.
    rows = _starts(h, sh, min(per_axis, math.ceil(h / sh)))
    cols = _starts(w, sw, min(per_axis, math.ceil(w / sw)))
    boxes = [(r, c, r + sh, c + sw) for r, c in itertools.product(rows, cols)]
    cy, cx = h / 2, w / 2
    boxes.sort(key=lambda b: ((b[0] + b[2]) / 2 - cy) ** 2 + ((b[1] + b[3]) / 2 - cx) ** 2)
    return boxes[:max(1, n)]


def _starts(length: int, side: int, count: int) -> list[int]:
    """``count`` evenly spaced window starts covering ``[0, length)``."""
    if count <= 1:
        return [(length - side) // 2]
    return sorted({round(s) for s in np.linspace(0, length - side, count)})


def sample_windows(image, n: int = 9, side: int = 1024) -> list[np.ndarray]:
    """Read up to ``n`` windows of ``image`` as numpy arrays (see :func:`window_grid`).

    Parameters
    ----------
    image : array-like
        ``(H, W, ...)`` numpy, dask or zarr array. Each window is sliced first and converted
        with :func:`numpy.asarray` afterwards, so a lazy array decodes only the chunks the
        windows overlap (never a strided view of the whole image).
    n : int
        Maximum number of windows.
    side : int
        Window side in pixels.

    Returns
    -------
    list of numpy.ndarray
        Raw windows (dtype and channels as stored), centred ones first.
    """
    return [np.asarray(image[r0:r1, c0:c1]) for r0, c0, r1, c1 in window_grid(image.shape, n, side)]


__all__ = ["sample_windows", "window_grid"]
