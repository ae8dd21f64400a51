"""Validate and normalise user images to the RGB uint8 arrays the core expects.

Microscope software writes grayscale, RGBA, 16-bit and float images; every core function takes
an ``(H, W, 3) uint8`` array, so all conversions live here and fail with a clear message.
"""

from __future__ import annotations

import numpy as np

MIN_SIDE = 16
#: A pixel whose red, green and blue differ by more than this (8-bit) carries stain colour.
#: Stained nuclei and red cells differ by far more (tests/test_pipeline.py checks 20 images
#: of each source pass); a grey picture stored as RGB has none (JPEG included).
COLOURLESS_SPREAD = 8
#: An image is colourless when at most this share of its (sampled) pixels carries colour:
#: nearly none, so that a single stained cell on a large field of glass still counts as colour.
COLOURLESS_MAX_SHARE = 1e-4
#: ... and it shows something: edges, i.e. a 99.9th percentile of the step between
#: neighbouring (sampled) pixels of at least this many grey levels. A grey copy of a smear
#: has sharp cell edges; a blank field, even with vignetting, steps by a level or so and stays
#: an empty result, not an error (both in tests/test_pipeline.py).
COLOURLESS_MIN_EDGE = 6


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


def check_has_colour(rgb: np.ndarray) -> None:
    """Raise :class:`ImageInputError` for a grey image stored as RGB (or RGBA).

    Such an image passes the shape check, but the white-cell detection reads the stain's
    colour, so it would silently find no cell. A blank field is left alone: it is empty. Only
    whole images are judged: windows sampled from a slide may all fall on bare glass.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(H, W, 3)`` uint8, the whole image (subsampled here to at most ~1M pixels).
    """
    step = max(1, int(np.ceil(np.sqrt(rgb.shape[0] * rgb.shape[1] / 1_000_000))))  # <= 1 MP
    r, g, b = (rgb[::step, ::step, c] for c in range(3))
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)  # no wrap
    if np.count_nonzero(spread > COLOURLESS_SPREAD) > COLOURLESS_MAX_SHARE * spread.size:
        return
    steps = np.abs(np.diff(g.astype(np.int16), axis=1))
    if steps.size and np.percentile(steps, 99.9) >= COLOURLESS_MIN_EDGE:
        raise ImageInputError(
            "The image has no colour (its red, green and blue channels are equal): it looks "
            "like a grayscale picture saved as RGB. White-cell detection relies on the colour "
            "of the Romanowsky stain: open the colour image.")


def value_range(samples) -> tuple[float, float] | None:
    """The intensity range to scale a non-8-bit image by, from samples of the whole image.

    Tiles of a large 16-bit or float image must share one scaling, or the same raw value would
    become different 8-bit values in different tiles; the pipeline computes this once from a
    few windows (:func:`napari_ddrnet.sampling.sample_windows`) and passes it to every tile.

    Parameters
    ----------
    samples : sequence of numpy.ndarray
        Windows of the image (any dtype, channels last).

    Returns
    -------
    tuple of float or None
        ``(low, high)`` for :func:`to_rgb_uint8`; ``None`` only for 8-bit images. Samples of a
        float image within 0..1 give ``(0, 1)`` and of an integer image within 0..255 give
        ``(0, 255)``, so that no tile falls back to its own range.
    """
    arrs = [np.asarray(a)[..., :3] for a in samples]
    if not arrs or arrs[0].dtype == np.uint8:
        return None
    lo = min(float(a.min()) for a in arrs)
    hi = max(float(a.max()) for a in arrs)
    if np.issubdtype(arrs[0].dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0
    if np.issubdtype(arrs[0].dtype, np.integer) and lo >= 0 and hi <= 255:
        return 0.0, 255.0
    return min(lo, 0.0), hi


def to_rgb_uint8(image: np.ndarray,
                 value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Convert an image to ``(H, W, 3) uint8``.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` RGB, ``(H, W, 4)`` RGBA (alpha dropped) or ``(3, H, W)`` channel-first,
        of any integer or float dtype. Integers wider than 8 bits are scaled by their actual
        range (a 12-bit camera stored in uint16 is not 1/16 as bright); floats are taken as 0..1
        when they fit there, else scaled by their range.
    value_range : tuple of float, optional
        ``(low, high)`` mapped to 0..255 instead of this array's own range: tiles of one image
        pass the whole image's range (see :func:`value_range`) so they are scaled alike.

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
    if value_range is not None:
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise ImageInputError("The image contains NaN or infinite values.")
        return _scale(arr, *value_range)
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
    return _scale(arr, min(lo, 0.0), hi)


def _scale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``lo..hi`` linearly to 0..255 (clipped)."""
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    scaled = (arr.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.ascontiguousarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8))
