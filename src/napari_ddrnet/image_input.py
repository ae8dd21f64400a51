"""Validate and normalise user images to the RGB uint8 arrays the core expects.

Microscope software writes grayscale, RGBA, 16-bit and float images; every core function takes
an ``(H, W, 3) uint8`` array, so all conversions live here and fail with a clear message.
"""

from __future__ import annotations

import numpy as np

MIN_SIDE = 16


class ImageInputError(ValueError):
    """An image that cannot be analysed, with a message meant for the user."""


def check_rgb_shape(shape: tuple[int, ...]) -> None:
    """Raise :class:`ImageInputError` unless ``shape`` is ``(H, W, 3|4)`` and big enough."""
    if len(shape) == 2 or (len(shape) == 3 and shape[-1] == 1):
        raise ImageInputError(
            "The image is grayscale. White-cell detection relies on the colour of the "
            "Romanowsky stain: open the RGB image of the smear."
        )
    if len(shape) != 3 or shape[-1] not in (3, 4):
        raise ImageInputError(
            f"Expected an RGB image of shape (rows, cols, 3); got shape {tuple(shape)}. "
            "Split multi-plane stacks and pick one RGB plane."
        )
    if min(shape[:2]) < MIN_SIDE:
        raise ImageInputError(f"The image is too small ({shape[0]}x{shape[1]} px).")


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Convert an image to ``(H, W, 3) uint8``.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` RGB, ``(H, W, 4)`` RGBA (alpha dropped) or ``(3, H, W)`` channel-first,
        of any integer or float dtype. Integers wider than 8 bits are scaled by their actual
        range (a 12-bit camera stored in uint16 is not 1/16 as bright); floats are taken as 0..1
        when they fit there, else scaled by their range.

    Returns
    -------
    numpy.ndarray
        The image as contiguous ``uint8`` RGB.

    Raises
    ------
    ImageInputError
        For grayscale or multi-plane images (a Romanowsky stain needs colour), images smaller
        than 16 px, or non-finite values.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    check_rgb_shape(arr.shape)
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == bool:
        raise ImageInputError("The image is a binary mask, not a stained smear.")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ImageInputError("The image contains NaN or infinite values.")
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            return np.ascontiguousarray(np.round(arr * 255.0).astype(np.uint8))
    elif not np.issubdtype(arr.dtype, np.integer):
        raise ImageInputError(f"Unsupported pixel type {arr.dtype}.")
    lo, hi = float(arr.min()), float(arr.max())
    if np.issubdtype(arr.dtype, np.integer) and lo >= 0 and hi <= 255:
        return np.ascontiguousarray(arr.astype(np.uint8))
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    lo = min(lo, 0.0)
    scaled = (arr.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.ascontiguousarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8))
