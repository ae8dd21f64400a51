"""Find white blood cells in a Romanowsky-stained smear field (scikit-image, no Qt, no torch).

The nucleus of a white cell is the only large object stained deep blue-violet: the stain's
azure/methylene-blue component makes it absorb red and green far more than blue, while red cells
(eosin) and the background do not. After white-balancing on the background, the chroma
``B - (R + G) / 2`` separates the two robustly across Wright, Giemsa and May-Grünwald-Giemsa
stains and across cameras. Every size below is in micrometres and converted with the pixel size,
so the same parameters serve a 640x480 field at 100x (WBC ~200 px) and low-magnification fields
(WBC ~40 px); the work itself is done at a fixed working resolution, which also keeps it fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage import filters, measure, morphology, segmentation, transform

from .scale import estimate_pixel_size
from .schema import GEOMETRY_COLUMNS, empty_geometry

#: Working resolution for segmentation, micrometres per pixel.
WORK_UM_PER_PX = 0.25

#: Columns of :attr:`Segmentation.cells` (defined once, in :mod:`napari_ddrnet.schema`).
CELL_COLUMNS = GEOMETRY_COLUMNS


@dataclass(frozen=True)
class SegmentationParams:
    """Tunable parameters of :func:`segment_wbc`; every length is in micrometres.

    The defaults were chosen on the BCCD ``train`` fields (see ``docs/segmentation.md``).
    """

    #: Lobes of one nucleus closer than this are grouped into one cell.
    lobe_gap_um: float = 1.6
    #: Nucleus groups smaller than this are platelets or debris.
    min_nucleus_area_um2: float = 12.0
    #: Nucleus groups larger than this are stain precipitate or clumps, not one cell.
    max_nucleus_area_um2: float = 400.0
    #: Cytoplasm rim grown around the convex hull of the nucleus.
    cytoplasm_um: float = 1.8
    #: Minimum chroma threshold (after white balance), a floor under Otsu for empty fields.
    min_chroma: float = 0.10
    #: Mean chroma a nucleus group must reach; pale platelet clumps stay below it.
    min_mean_chroma: float = 0.16


@dataclass
class Segmentation:
    """Result of :func:`segment_wbc`.

    Attributes
    ----------
    labels : numpy.ndarray
        ``int32`` label image at the input resolution, 0 = background, ``k`` = cell ``k``.
    nuclei : numpy.ndarray
        ``int32`` label image of the nuclei, same ids as ``labels``.
    cells : pandas.DataFrame
        One row per cell, columns :data:`CELL_COLUMNS` (pixels, max exclusive).
    pixel_size_um : float
        Pixel size used, micrometres per pixel.
    pixel_size_source : str
        ``"given"`` or ``"estimated"``.
    """

    labels: np.ndarray
    nuclei: np.ndarray
    cells: pd.DataFrame
    pixel_size_um: float
    pixel_size_source: str


@dataclass(frozen=True)
class FieldStats:
    """Whole-image statistics that every tile of a large image must share.

    Attributes
    ----------
    white : tuple of float
        Background (white point) RGB, the 95th percentile of each channel.
    threshold : float
        Nucleus chroma threshold (Otsu, floored at ``min_chroma``).
    """

    white: tuple[float, float, float]
    threshold: float


def nucleus_chroma(rgb: np.ndarray, white) -> np.ndarray:
    """Return the white-balanced blue-violet chroma ``B - (R + G) / 2`` in about ``[-1, 1]``.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(H, W, 3) uint8`` image.
    white : sequence of float
        Background RGB. Dividing by it means a yellowish halogen lamp or a bluish LED does not
        shift the chroma.
    """
    img = rgb.astype(np.float32)
    img /= np.maximum(np.asarray(white, np.float32), 1.0)
    return img[..., 2] - 0.5 * (img[..., 0] + img[..., 1])


def field_statistics(image, params: SegmentationParams | None = None,
                     max_pixels: int = 2_000_000) -> FieldStats:
    """White point and nucleus threshold from an evenly strided subsample of ``image``.

    ``image`` may be any array-like that supports slicing (numpy, dask, zarr): only the
    subsample is read, so this works on images far larger than memory.
    """
    from .image_input import to_rgb_uint8

    params = params or SegmentationParams()
    h, w = image.shape[:2]
    stride = max(1, int(np.ceil(np.sqrt(h * w / max_pixels))))
    sub = to_rgb_uint8(np.asarray(image[::stride, ::stride]))
    white = np.percentile(sub.reshape(-1, 3), 95, axis=0)
    chroma = nucleus_chroma(sub, white)
    try:
        thr = float(filters.threshold_otsu(chroma))
    except ValueError:  # uniform image
        thr = params.min_chroma
    return FieldStats(tuple(float(v) for v in white), max(thr, params.min_chroma))


def empty_cells_table() -> pd.DataFrame:
    """An empty per-cell table with the right columns and dtypes."""
    return empty_geometry()


def segment_wbc(
    rgb: np.ndarray,
    pixel_size_um: float | None = None,
    params: SegmentationParams | None = None,
    stats: FieldStats | None = None,
) -> Segmentation:
    """Segment the white blood cells of one smear field.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(H, W, 3) uint8`` image (see :func:`napari_ddrnet.image_input.to_rgb_uint8`).
    pixel_size_um : float, optional
        Micrometres per pixel. When ``None`` it is estimated from the median red-cell diameter.
    params : SegmentationParams, optional
        Sizes and thresholds; the defaults suit Romanowsky-stained peripheral blood.
    stats : FieldStats, optional
        White point and threshold; default: :func:`field_statistics` of ``rgb``. Tiles of a large
        image pass the whole image's statistics so that every tile is segmented alike.

    Returns
    -------
    Segmentation
        Label images at the input resolution and the per-cell table. An empty field gives an
        empty table and all-zero labels, not an error.
    """
    params = params or SegmentationParams()
    shape = rgb.shape[:2]
    source = "given"
    if pixel_size_um is None:
        pixel_size_um = estimate_pixel_size(rgb)
        source = "estimated"
    if not pixel_size_um > 0:
        raise ValueError(f"pixel size must be positive, got {pixel_size_um!r}")

    factor = pixel_size_um / WORK_UM_PER_PX  # input px -> working px
    stats = stats or field_statistics(rgb, params)
    chroma = nucleus_chroma(rgb, stats.white)
    if abs(factor - 1.0) > 0.05:
        work_shape = (max(8, round(shape[0] * factor)), max(8, round(shape[1] * factor)))
        chroma_w = transform.resize(chroma, work_shape, order=1, anti_aliasing=factor < 1,
                                    preserve_range=True).astype(np.float32)
    else:
        work_shape = shape
        chroma_w = chroma
    um = 1.0 / WORK_UM_PER_PX  # working pixels per micrometre
    chroma_w = filters.gaussian(chroma_w, sigma=0.4 * um, preserve_range=True)

    nuc_w, cell_w = _segment_working(chroma_w, stats.threshold, params, um)
    labels, nuclei = _to_input_resolution(cell_w, nuc_w, shape, work_shape)
    cells = _cell_table(labels, nuclei, pixel_size_um)
    return Segmentation(labels, nuclei, cells, float(pixel_size_um), source)


def _segment_working(chroma: np.ndarray, thr: float, p: SegmentationParams, um: float):
    """Nucleus and cell labels at the working resolution."""
    if chroma.size == 0 or float(chroma.max()) < thr:
        empty = np.zeros(chroma.shape, np.int32)
        return empty, empty
    nuc = chroma > thr
    nuc = morphology.remove_small_objects(nuc, max_size=max(1, int(0.8 * um * um)))
    nuc = ndi.binary_fill_holes(nuc)

    # Group the lobes of one segmented nucleus: components closer than lobe_gap_um merge.
    gap = max(1, int(round(p.lobe_gap_um * um / 2)))
    grouped = ndi.binary_dilation(nuc, structure=morphology.disk(gap))
    groups = measure.label(grouped)
    nuc_labels = np.where(nuc, groups, 0).astype(np.int32)

    min_a = p.min_nucleus_area_um2 * um * um
    max_a = p.max_nucleus_area_um2 * um * um
    keep = np.zeros(groups.max() + 1, bool)
    for r in measure.regionprops(nuc_labels, intensity_image=chroma):
        if min_a <= r.area <= max_a and r.intensity_mean >= p.min_mean_chroma:
            keep[r.label] = True
    nuc_labels = np.where(keep[nuc_labels], nuc_labels, 0)
    nuc_labels, _, _ = segmentation.relabel_sequential(nuc_labels)
    nuc_labels = nuc_labels.astype(np.int32)
    if nuc_labels.max() == 0:
        return nuc_labels, nuc_labels

    # Cell = convex hull of its nucleus grown by the cytoplasm rim; expand_labels splits
    # touching cells half-way between their nuclei instead of merging them.
    hulls = np.zeros_like(nuc_labels)
    for r in measure.regionprops(nuc_labels):
        r0, c0, r1, c1 = r.bbox
        sub = hulls[r0:r1, c0:c1]
        sub[r.image_convex & (sub == 0)] = r.label
    cells = segmentation.expand_labels(hulls, distance=p.cytoplasm_um * um)
    return nuc_labels, cells.astype(np.int32)


def _to_input_resolution(cell_w, nuc_w, shape, work_shape):
    if tuple(work_shape) == tuple(shape):
        return cell_w, nuc_w
    labels = transform.resize(cell_w, shape, order=0, preserve_range=True,
                              anti_aliasing=False).astype(np.int32)
    nuclei = transform.resize(nuc_w, shape, order=0, preserve_range=True,
                              anti_aliasing=False).astype(np.int32)
    return labels, nuclei


def _cell_table(labels: np.ndarray, nuclei: np.ndarray, px_um: float) -> pd.DataFrame:
    if labels.max() == 0:
        return empty_cells_table()
    h, w = labels.shape
    nuc_area = np.bincount(nuclei.ravel(), minlength=labels.max() + 1)
    rows = []
    for r in measure.regionprops(labels):
        r0, c0, r1, c1 = r.bbox
        rows.append(
            {
                "cell_id": int(r.label),
                "centroid_row": float(r.centroid[0]),
                "centroid_col": float(r.centroid[1]),
                "min_row": r0,
                "min_col": c0,
                "max_row": r1,
                "max_col": c1,
                "area_px": int(r.area),
                "nucleus_area_px": int(nuc_area[r.label]),
                "area_um2": float(r.area * px_um * px_um),
                "nucleus_area_um2": float(nuc_area[r.label] * px_um * px_um),
                "touches_border": bool(r0 == 0 or c0 == 0 or r1 == h or c1 == w),
            }
        )
    return pd.DataFrame(rows, columns=CELL_COLUMNS)
