"""Pixel size: take it from the user or the file, or measure it on the red cells of the smear.

A normal red cell is about 7.5 µm across in every smear, which makes it a built-in ruler when a
file carries no calibration. The measurement is done on a few windows of a fixed size *in cell
diameters*, each resampled so that a red cell spans :data:`WORK_DIAMETER_PX` pixels, so its
result does not depend on how many pixels the image has (a mosaic of one field gives the
field's value) and a lazy whole-slide image is read only where the windows are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage import feature, filters, measure, morphology, transform

from .sampling import sample_windows, window_grid
from .specimen import BORDER_PX, NOT_SPECIMEN_FRACTION, not_specimen

#: Diameter of a normal red cell, micrometres.
RBC_DIAMETER_UM = 7.5
#: Where a pixel size can come from, most to least trusted.
PIXEL_SIZE_SOURCES = ("given", "metadata", "estimated", "default")
#: Plausible brightfield pixel sizes, micrometres per pixel. 0.02 is below any real set-up
#: (a 100x/1.4 oil objective with a 2x relay and 3.45 µm camera pixels gives 0.017-0.035;
#: anything finer only oversamples); 1.0 is a 10x whole-slide scan, where a red cell spans
#: 7.5 px and a white cell barely 12 px, the coarsest grid on which cells can still be told
#: apart. Values outside are typos or unit mix-ups (a 1200 dpi TIFF tag reads as 21 µm/px),
#: and would make the 0.25 µm/px segmentation grid up- or downsample absurdly: memory grows with
#: the square of the factor.
MIN_PIXEL_SIZE_UM = 0.02
MAX_PIXEL_SIZE_UM = 1.0
#: Used only when nothing else is known (typical 100x oil objective + camera); reported as
#: ``"default"``, never as estimated.
DEFAULT_PIXEL_SIZE_UM = 0.1

#: Red-cell diameter on the measuring grid, pixels.
WORK_DIAMETER_PX = 32.0
#: Window side in red-cell diameters (about 50-80 cells in a normal monolayer).
WINDOW_DIAMETERS = 10.0
#: Fewest measured cells for an estimate.
MIN_CELLS = 3
#: Windows averaged in the final measurement.
N_WINDOWS = 9
#: Most measuring passes before a field that does not converge is declined.
_MAX_ITERATIONS = 6
#: Largest window side of the rough pass, pixels (unless 5 trial diameters need more).
_ROUGH_MAX_SIDE = 2048
#: Trial red-cell diameters (input pixels) for the first, rough pass: a factor 2 apart, from
#: MAX_PIXEL_SIZE_UM (7.5 px) to below MIN_PIXEL_SIZE_UM (375 px).
_TRIAL_DIAMETERS_PX = tuple(RBC_DIAMETER_UM / MAX_PIXEL_SIZE_UM * 2.0 ** k for k in range(7))


class PixelSizeError(ValueError):
    """An unusable pixel size, with a message meant for the user."""


@dataclass(frozen=True)
class PixelSize:
    """A pixel size and where it came from.

    Attributes
    ----------
    um : float
        Micrometres per pixel.
    source : str
        One of :data:`PIXEL_SIZE_SOURCES`.
    note : str
        Why a more trusted source was not used (empty when nothing to say).
    """

    um: float
    source: str
    note: str = ""

    def __post_init__(self) -> None:
        if self.source not in PIXEL_SIZE_SOURCES:
            raise ValueError(f"source must be one of {PIXEL_SIZE_SOURCES}, got {self.source!r}")


def check_pixel_size(um: float, what: str = "pixel size") -> float:
    """Return ``um`` as a float if it is a plausible brightfield pixel size.

    Raises
    ------
    PixelSizeError
        For non-numbers, non-finite or non-positive values and values outside
        [:data:`MIN_PIXEL_SIZE_UM`, :data:`MAX_PIXEL_SIZE_UM`].
    """
    try:
        value = float(um)
    except (TypeError, ValueError):
        raise PixelSizeError(f"The {what} must be a number of µm per pixel, got {um!r}.") from None
    if not math.isfinite(value) or value <= 0:
        raise PixelSizeError(f"The {what} must be a positive number of µm per pixel, got {um!r}.")
    if not MIN_PIXEL_SIZE_UM <= value <= MAX_PIXEL_SIZE_UM:
        raise PixelSizeError(
            f"The {what} of {value:g} µm per pixel is implausible for a blood smear "
            f"(expected {MIN_PIXEL_SIZE_UM:g}-{MAX_PIXEL_SIZE_UM:g}; a 100x objective gives about "
            "0.1, a 40x scan 0.25). Check the unit: a TIFF resolution in dpi is not a "
            "microscope calibration."
        )
    return value


def estimate_pixel_size(image) -> float | None:
    """Estimate micrometres per pixel from the median red-cell diameter.

    Parameters
    ----------
    image : array-like
        ``(H, W, 3|4)`` RGB(A) numpy array of any dtype, or a lazy dask/zarr array: only a
        few windows are read.

    Returns
    -------
    float or None
        Micrometres per pixel, or ``None`` when fewer than :data:`MIN_CELLS` red cells can be
        measured (single-cell crops, empty fields) or the result is implausible.
    """
    return _estimate(image)[0]


#: Fewest measured images of one folder whose estimates are pooled (:func:`pooled_pixel_size`).
MIN_POOLED_ESTIMATES = 10


def pooled_pixel_size(sizes) -> PixelSize | None:
    """One pixel size for a folder of images, from their own red-cell estimates.

    The images of one folder usually come from one microscope and camera, so they share one
    scale. A single-cell export (128-360 px) holds only a few red cells and its own estimate
    is rough: in LISC's neutrophil folder the 5-95 % range is 0.106-0.195 µm/px around a
    median of 0.169, and 27 of 251 images cannot be measured
    (``benchmarks/results/pooled_pixel_size.log``); ``count --single-cell`` gives the folder's
    median to each image whose own value was only estimated or the default. A field's own
    estimate is close (docs/pixel-size.md), but 1-5 % of fields (crowded, blurred, few red
    cells) are declined; ``count`` gives those the folder's median instead of the 0.1 µm/px
    default (``benchmarks/results/field_pooled_pixel_size.log``).

    Parameters
    ----------
    sizes : iterable of PixelSize
        The folder's images' own pixel sizes.

    Returns
    -------
    PixelSize or None
        ``estimated``, with a note saying it is the folder's median; ``None`` with fewer than
        :data:`MIN_POOLED_ESTIMATES` estimates.
    """
    est = [p.um for p in sizes if p.source == "estimated"]
    if len(est) < MIN_POOLED_ESTIMATES:
        return None
    return PixelSize(float(np.median(est)), "estimated",
                     f"median of the red-cell estimates of {len(est)} images of its folder")


def pool_by_folder(sizes: Mapping[str, PixelSize],
                   replace: tuple[str, ...] = ("default",)) -> dict[str, PixelSize]:
    """The folder's pooled pixel size for each image whose own is of a ``replace`` source.

    Parameters
    ----------
    sizes : mapping
        Image path (as given) -> its own pixel size. Images are grouped by the folder they
        are in (an analyser's or a microscope's images sit in one folder), however they were
        listed (a folder, or files from a shell glob).
    replace : tuple of str
        Sources the pooled value replaces: ``("default",)`` for fields, whose own estimates
        are good when there is one; ``("estimated", "default")`` for single-cell exports,
        whose own are rough.

    Returns
    -------
    dict
        Image path -> :func:`pooled_pixel_size` of its folder, only for the images it replaces
        (a folder with too few estimates replaces none).
    """
    folders: dict[Path, list[str]] = {}
    for name in sizes:
        folders.setdefault(Path(name).absolute().parent, []).append(name)
    out = {}
    for names in folders.values():
        pooled = pooled_pixel_size(sizes[n] for n in names)
        if pooled is not None:
            out.update({n: pooled for n in names if sizes[n].source in replace})
    return out


def pooled_message(px: PixelSize) -> str:
    """What a field whose own red-cell estimate was declined is measured with instead."""
    return f"its red cells could not be measured; pixel size {px.um:.4g} µm, the {px.note}"


def resolve_pixel_size(image, given: float | None = None,
                       metadata: float | None = None) -> PixelSize:
    """Choose the pixel size: given > metadata > estimated > default.

    Parameters
    ----------
    image : array-like or None
        The smear (see :func:`estimate_pixel_size`); ``None`` skips the estimate.
    given : float, optional
        Typed by the user. Checked: an implausible value raises, since the user can fix it.
    metadata : float, optional
        Read from the file. An implausible value is ignored with a note (files often carry
        a meaningless dpi resolution), and the pixel size is estimated instead.

    Raises
    ------
    PixelSizeError
        When ``given`` is not a plausible pixel size.
    """
    if given is not None:
        return PixelSize(check_pixel_size(given, "given pixel size"), "given")
    notes = []
    if metadata is not None:
        try:
            return PixelSize(check_pixel_size(metadata, "pixel size in the file"), "metadata")
        except PixelSizeError as err:
            notes.append(f"ignored: {err}")
    if image is not None:
        um, why = _estimate(image)
        if um is not None:
            return PixelSize(um, "estimated", " ".join(notes))
        notes.append(why)
    notes.append(f"assumed {DEFAULT_PIXEL_SIZE_UM:g} µm per pixel; enter the pixel size if known.")
    return PixelSize(DEFAULT_PIXEL_SIZE_UM, "default", " ".join(notes))


def _estimate(image) -> tuple[float | None, str]:
    """Pixel size and, when it is ``None``, the reason."""
    d = red_cell_diameter_px(image)
    if d is None:
        return None, ("too few separate, round red cells to measure the pixel size (a "
                      "single-cell image, a crowded or blurred field, or no red cells).")
    um = RBC_DIAMETER_UM / d
    if not MIN_PIXEL_SIZE_UM <= um <= MAX_PIXEL_SIZE_UM:
        return None, f"the red-cell estimate ({um:.3g} µm per pixel) is implausible."
    return um, ""


def red_cell_diameter_px(image, guess_px: float | None = None) -> float | None:
    """Typical red-cell diameter in input pixels, or ``None`` when too few cells are measurable.

    Parameters
    ----------
    image : array-like
        ``(H, W, 3|4)`` numpy, dask or zarr array (only windows are read).
    guess_px : float, optional
        Rough diameter; sets the window size and measuring grid. Default: a first pass finds it.

    Notes
    -----
    Up to :data:`N_WINDOWS` windows of :data:`WINDOW_DIAMETERS` cell diameters are each
    measured on a grid where a cell spans :data:`WORK_DIAMETER_PX` pixels, and the median over
    windows is taken, so the number of input pixels does not matter. The measurement is
    repeated on the grid its own result implies until the two agree within 5 %, so the rough
    first guess does not bias it; a field where they never agree is declined.
    """
    return _fixed_point(image, guess_px or _rough_diameter(image))


def _fixed_point(image, d: float | None) -> float | None:
    """Diameter that the windows measured on its own grid confirm within 5 % (or ``None``)."""
    for _ in range(_MAX_ITERATIONS):
        if d is None:
            return None
        new = _windows_median(image, d)
        if new is None:
            return None
        if abs(math.log(new / d)) < math.log(1.05):
            return new
        d = math.sqrt(d * new)  # damped: a few fields alternate between two grids
    return None  # no fixed point: the cells merge on every grid (very dense or blurred field)


def _windows_median(image, guess_px: float) -> float | None:
    """Median over windows of the per-window diameter (input pixels)."""
    side = max(8, round(WINDOW_DIAMETERS * guess_px))
    found = [_window_diameter(w, guess_px) for w in sample_windows(image, N_WINDOWS, side)]
    found = [d for d in found if d is not None]
    return float(np.median(found)) if found else None


def _rough_diameter(image) -> float | None:
    """First pass: where the measured diameter crosses the trial diameter it was measured for.

    Each trial (2x apart) reads the central window of its own size and measures it on a grid
    scaled for that trial. The measurement grows more slowly than the trial, so it is above
    the trial below the true size and below it above; the largest such crossing, interpolated
    in log scale, is the rough size. Smaller crossings come from windows that hold only a
    few cells, where nucleus lobes can pass for cells.
    """
    h, w = image.shape[:2]
    # Fewer than 2.5 cells across a trial's window: too few to measure.
    trials = [t for t in _TRIAL_DIAMETERS_PX if t <= min(h, w) / 2.5]
    logs: dict[int, float | None] = {len(trials): None}  # past the largest trial: nothing

    def log_ratio(i: int) -> float | None:
        """log(measured / trial) for trial ``i``, measured only when first asked for: the
        search starts at the largest trial and usually stops two trials down, so the small
        trials (upsampled windows, the slowest) are rarely read."""
        if i not in logs:
            trial = trials[i]
            # Large trials get fewer cell diameters: reading 4800 px windows would dominate.
            side = max(8, round(min(WINDOW_DIAMETERS * trial, max(_ROUGH_MAX_SIDE, 5 * trial))))
            r0, c0, r1, c1 = window_grid(image.shape, n=1, side=side)[0]
            d = _window_diameter(np.asarray(image[r0:r1, c0:c1]), trial)
            logs[i] = None if d is None else math.log(d / trial)
        return logs[i]

    for i in reversed(range(len(trials))):
        f0 = log_ratio(i)
        if f0 is None:
            continue
        f1 = log_ratio(i + 1)
        if f0 > 0 and f1 is not None and f1 < 0:
            return trials[i] * 2.0 ** (f0 / (f0 - f1))
        # Next to a trial that measured nothing (window too small or too coarse for the
        # image), the measurement itself is the best rough size when it is within 2x.
        near = abs(f0) < math.log(1.15)
        edge = (f0 > 0 and f1 is None) or (f0 < 0 and (i == 0 or log_ratio(i - 1) is None))
        if near or (edge and abs(f0) < math.log(2.0)):
            return trials[i] * math.exp(f0)
    return None


def _window_diameter(window: np.ndarray, guess_px: float) -> float | None:
    """Red-cell diameter (input pixels) in one window, measured on the grid set by the guess."""
    factor = WORK_DIAMETER_PX / guess_px
    rgb = np.asarray(window)
    if rgb.ndim != 3 or rgb.shape[-1] < 3 or min(rgb.shape[:2]) * factor < 16:
        return None
    green = rgb[..., 1]
    if green.dtype.kind == "f":
        green = np.nan_to_num(green)
    green = _specimen_only(rgb, green)
    if factor < 0.5:  # block means first: cheap on large windows
        k = int(1.0 / factor)
        green = transform.downscale_local_mean(green, (k, k))
        factor *= k
    green = green.astype(np.float32, copy=False)
    if abs(factor - 1.0) > 0.02:
        green = transform.rescale(green, factor, order=1, anti_aliasing=factor < 1,
                                  preserve_range=True)
    dark = _darkness(green)
    if dark is None:
        return None
    fg = _foreground(filters.gaussian(dark, sigma=1.0, preserve_range=True))
    if fg is None:
        return None
    peaks = _peak_diameters(fg)
    if len(peaks) < MIN_CELLS:
        return None
    # Necks between touching cells give low peaks, white cells high ones: the 75th percentile
    # sits on the red-cell centres.
    return float(np.percentile(peaks, 75)) * guess_px / WORK_DIAMETER_PX


def _specimen_only(rgb: np.ndarray, green: np.ndarray) -> np.ndarray:
    """``green`` with the pixels that are not specimen (black fill, an eyepiece's rim) set to
    the window's background, so that they are neither cells nor darken the local white.

    Until 2026-12-06 black corners read as huge dark cells: the estimate was declined on a
    third of the Kaggle TEST fields (rotated half-size BCCD copies), and read high on others.
    """
    # Cheap first (it runs on every window): a pixel that counts is inside the border line and
    # darker in every channel than the fraction of the background, itself below the brightest
    # value. Green narrows the candidates (dark nuclei of some stains pass it), then all three.
    b = BORDER_PX if min(green.shape) > 2 * BORDER_PX else 0
    limit = NOT_SPECIMEN_FRACTION * float(np.nanmax(rgb))  # alpha only loosens it
    inner = (slice(b, green.shape[0] - b), slice(b, green.shape[1] - b))
    candidates = green[inner] < limit
    if not candidates.any() or not (rgb[inner][..., :3][candidates].max(axis=-1) < limit).any():
        return green
    rgb = np.nan_to_num(rgb[..., :3])
    # The background from every 4th pixel each way: plenty for a percentile, 16x cheaper.
    white = np.percentile(rgb[::4, ::4].reshape(-1, 3), 95, axis=0)
    outside = not_specimen(rgb, white, border_px=BORDER_PX)
    if outside is None or outside.all():
        return green
    return np.where(outside, np.percentile(green[~outside], 95), green).astype(green.dtype)


def _darkness(green: np.ndarray) -> np.ndarray | None:
    """Darkness in 0..1 of the green channel against the local white (``None`` if blank).

    Romanowsky-stained red cells absorb green most, and the green channel is the least noisy.
    The white is taken per block of two cell diameters (uneven illumination darkens whole
    corners of a field), but never below 85 % of the window's white, so that a block filled
    with cells does not pass for background.
    """
    white = float(np.percentile(green, 97))
    if white <= 0 or min(green.shape) < 16:
        return None
    block = int(2 * WORK_DIAMETER_PX)
    local = measure.block_reduce(green, (block, block), func=_p95)
    local = transform.resize(np.maximum(local, 0.85 * white), green.shape, order=1)
    return np.clip(1.0 - green / local, 0.0, 1.0)


def _p95(x: np.ndarray, axis) -> np.ndarray:
    return np.percentile(x, 95, axis=axis)


def _peak_diameters(fg: np.ndarray) -> np.ndarray:
    """Diameters (grid pixels) at the distance-transform peaks of the filled cell mask.

    Each cell, touching others or not, keeps a peak of its own radius at its centre. Peaks at
    the window border (cut cells) are left out.
    """
    dist = ndi.distance_transform_edt(fg)
    peaks = feature.peak_local_max(dist, min_distance=5, threshold_abs=4.0, exclude_border=True)
    return 2.0 * dist[peaks[:, 0], peaks[:, 1]]


def _foreground(dark: np.ndarray) -> np.ndarray | None:
    """Filled cell mask of a smoothed darkness image, or ``None`` without clear cells.

    Only scale-free steps and a small opening: a closing or a threshold nearer the background
    merges neighbouring cells when the grid is coarser than assumed, and the measurement then
    grows with the guess instead of settling on the cells.
    """
    # Nuclei are far darker than red cells and would pull Otsu's threshold up: clip them to the
    # level of the darkest red cells first.
    otsu = float(filters.threshold_otsu(np.minimum(dark, np.percentile(dark, 85))))
    fg = dark > max(otsu, 0.03)
    # No cells, or a window inside one cell: no clear step between background and cells.
    if not 0.02 < fg.mean() < 0.95 or dark[fg].mean() - dark[~fg].mean() < 0.06:
        return None
    fg = ndi.binary_fill_holes(fg)  # pale red-cell centres
    return ndi.binary_opening(fg, morphology.disk(2))


__all__ = [
    "DEFAULT_PIXEL_SIZE_UM",
    "MAX_PIXEL_SIZE_UM",
    "MIN_PIXEL_SIZE_UM",
    "PIXEL_SIZE_SOURCES",
    "RBC_DIAMETER_UM",
    "PixelSize",
    "PixelSizeError",
    "check_pixel_size",
    "estimate_pixel_size",
    "red_cell_diameter_px",
    "resolve_pixel_size",
]
