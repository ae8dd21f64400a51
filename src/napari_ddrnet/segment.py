"""Find white blood cells in a Romanowsky-stained smear field (scikit-image, no Qt, no torch).

The nucleus of a white cell is the only large object whose colour departs from the field's red
cells: its azure/methylene-blue dye absorbs light in a different ratio of red, green and blue
than eosin-stained red cells. How it looks depends on the lab (blue-violet in BCCD, magenta on a
Raabin-WBC smartphone image, near-black in a CellaVision image), so nothing about its hue is
fixed. Each field is white-balanced on its own background and converted to optical density; the
field's own red-cell colour is measured (the middle density class) and removed, and what is left
(the density orthogonal to the red-cell colour) is the nucleus signal, thresholded per field by
Otsu. A colour cast of the lamp or camera cancels in the white balance; a gamma change scales
the signal and the threshold alike. Every size below is in micrometres and converted with the
pixel size, so the same parameters serve a 640x480 field at 100x (WBC ~200 px) and
low-magnification fields (WBC ~40 px); the work itself is done at a fixed working resolution,
which also keeps it fast."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage import filters, measure, morphology, segmentation, transform

from .scale import PIXEL_SIZE_SOURCES, check_pixel_size, resolve_pixel_size
from .schema import GEOMETRY_COLUMNS, empty_geometry
from .specimen import BORDER_PX, not_specimen

#: Working resolution for segmentation, micrometres per pixel.
WORK_UM_PER_PX = 0.25


#: Pixels sampled (evenly strided) for the field statistics of one field.
STATS_PIXELS = 100_000

#: Shape of a round, whole nucleus (not one lobe of a segmented one).
ROUND_SOLIDITY = 0.93
ROUND_ECCENTRICITY = 0.6

#: Unit optical-density colour of red cells in a Wright-stained BCCD field, used when a field has
#: too few stained pixels to measure its own.
DEFAULT_RED_CELL_OD: tuple[float, float, float] = (0.37, 0.71, 0.60)


@dataclass(frozen=True)
class SegmentationParams:
    """Tunable parameters of :func:`segment_wbc`; every length is in micrometres.

    The defaults were chosen on the BCCD ``train`` fields and the development part of TXL-PBC
    (see ``docs/segmentation.md``).
    """

    #: Lobes of one nucleus closer than this are grouped into one cell.
    lobe_gap_um: float = 1.6
    #: Nucleus parts smaller than ``max_lobe_area_um2`` join a neighbour up to this far away.
    lobe_reach_um: float = 3.0
    #: Largest area of one lobe of a segmented nucleus. 45, not 38: the two large lobes of a
    #: Raabin-WBC eosinophil read 40-45 µm² when the estimated pixel size is ~1.2x too large.
    max_lobe_area_um2: float = 45.0
    #: Smallest part that reaches out as a lobe; smaller ones (platelets) only join at lobe_gap.
    min_lobe_area_um2: float = 4.0
    #: Nucleus groups smaller than this are platelets or debris.
    min_nucleus_area_um2: float = 12.0
    #: Nucleus groups larger than this are stain precipitate or clumps, not one cell.
    max_nucleus_area_um2: float = 400.0
    #: With a pixel size that nobody confirmed (estimated from the red cells or the default),
    #: the largest nucleus group is this many times ``max_nucleus_area_um2``: where a white
    #: cell fills much of a single-cell image the estimate can be 2-3x off (or is declined and
    #: the default is used), and the cell would be rejected as a clump.
    unverified_area_factor: float = 8.0
    #: Cytoplasm rim grown around the convex hull of the nucleus.
    cytoplasm_um: float = 1.8
    #: Nucleus threshold = this factor x Otsu of the signal over the field's stained pixels.
    otsu_factor: float = 0.8
    #: Minimum nucleus-signal threshold, a floor under Otsu for fields without white cells.
    min_signal: float = 0.15
    #: Mean signal a nucleus group must reach, relative to the field's threshold.
    min_mean_signal: float = 1.1
    #: Summed optical density above which a pixel counts as stained (not background).
    stained_od: float = 0.15
    #: Fewer stained pixels than this fraction: use the default red-cell colour.
    min_stained_fraction: float = 0.02


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
        One row per cell, columns :data:`napari_ddrnet.schema.GEOMETRY_COLUMNS` (pixels,
        max exclusive).
    pixel_size_um : float
        Pixel size used, micrometres per pixel.
    pixel_size_source : str
        ``"given"``, ``"estimated"`` or ``"default"`` (see
        :func:`napari_ddrnet.scale.resolve_pixel_size`).
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
        Nucleus signal threshold (Otsu over the stained pixels, floored at ``min_signal``;
        infinite for a uniform field, which has no nucleus).
    red_cell_od : tuple of float
        Unit optical-density colour of the field's red cells (white-balanced), the reference
        the nucleus signal is measured against.
    """

    white: tuple[float, float, float]
    threshold: float
    red_cell_od: tuple[float, float, float] = DEFAULT_RED_CELL_OD


def optical_density(rgb: np.ndarray, white) -> np.ndarray:
    """White-balanced optical density ``-log(I / white)`` per channel, ``(H, W, 3) float32``.

    Dividing by the background makes a colour cast of the lamp or camera (a per-channel gain)
    vanish; a gamma change only scales every density alike.
    """
    img = rgb.astype(np.float32)
    img /= np.maximum(np.asarray(white, np.float32), 1.0)
    np.clip(img, 1.0 / 255.0, 1.0, out=img)
    return -np.log(img)


def nucleus_chroma(rgb: np.ndarray, white, red_cell_od=DEFAULT_RED_CELL_OD) -> np.ndarray:
    """Return the nucleus signal: the optical density left after removing the red-cell colour.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(H, W, 3) uint8`` image.
    white : sequence of float
        Background RGB (see :func:`optical_density`).
    red_cell_od : sequence of float
        Unit optical-density direction of the field's red cells.

    Notes
    -----
    Red cells (eosin), overlapping red cells and the background all lie on the line spanned by
    the red-cell density; the azure/methylene-blue dye of a nucleus pulls away from it whatever
    hue it takes on a given stain and camera (blue-violet in BCCD, magenta in Raabin-WBC). The
    signal is the length of the density component orthogonal to the red-cell colour. Pixels
    that are not specimen (:func:`not_specimen`: black fill, masks) have no signal.
    """
    od = optical_density(rgb, white)
    e = np.asarray(red_cell_od, np.float32)
    od -= (od @ e)[..., None] * e
    signal = np.sqrt(np.einsum("...c,...c->...", od, od))
    outside = not_specimen(rgb, white)
    if outside is not None:
        signal[outside] = 0.0
    return signal


def red_cell_colour(stained_od: np.ndarray, n_pixels: int,
                    params: SegmentationParams | None = None) -> np.ndarray:
    """Unit optical-density direction of the red cells of a field.

    Parameters
    ----------
    stained_od : numpy.ndarray
        ``(N, 3)`` optical densities of the field's red-cell pixels (stained, paler than nuclei).
    n_pixels : int
        Number of pixels of the field, stained or not.
    params : SegmentationParams, optional
        ``min_stained_fraction``.

    Notes
    -----
    Fields with too few red-cell pixels (a blank field, a single-cell crop without red cells)
    fall back to :data:`DEFAULT_RED_CELL_OD`.
    """
    params = params or SegmentationParams()
    if len(stained_od) < max(50, params.min_stained_fraction * n_pixels):
        return np.asarray(DEFAULT_RED_CELL_OD, np.float32)
    v = np.median(stained_od, axis=0)
    n = float(np.linalg.norm(v))
    return (v / n).astype(np.float32) if n > 0 else np.asarray(DEFAULT_RED_CELL_OD, np.float32)


def field_statistics(image, params: SegmentationParams | None = None,
                     max_pixels: int = 2_000_000) -> FieldStats:
    """White point, red-cell colour and nucleus threshold from a subsample of ``image``.

    A numpy image is subsampled with an even stride. A lazy one (dask, zarr) is read only in
    a few windows (:func:`napari_ddrnet.sampling.sample_windows`): a strided slice of a lazy
    array would decode every chunk.
    """
    from .image_input import to_rgb_uint8, value_range

    if not isinstance(image, np.ndarray):
        from .sampling import sample_windows

        windows = sample_windows(image)
        vrange = value_range(windows)
        image = np.concatenate([to_rgb_uint8(w, vrange) for w in windows], axis=1)
    h, w = image.shape[:2]
    stride = max(1, int(np.ceil(np.sqrt(h * w / max_pixels))))
    sub = to_rgb_uint8(np.asarray(image[::stride, ::stride]))
    return _statistics(sub, params or SegmentationParams())


def _statistics(rgb: np.ndarray, params: SegmentationParams) -> FieldStats:
    """:class:`FieldStats` of ``rgb``."""
    b = BORDER_PX
    crop = min(rgb.shape[:2]) > 4 * b
    if crop:  # ignore the border line of resized fields (see segment_wbc)
        rgb = rgb[b:-b, b:-b]
    white = np.percentile(rgb.reshape(-1, 3), 95, axis=0)
    od = optical_density(rgb, white)
    total = od.sum(axis=-1)
    outside = not_specimen(rgb, white)
    if outside is not None:  # black fill would take the whole "nucleus" density class
        total[outside] = 0.0
    # Three density classes: background, red cells (and cytoplasm), nuclei. The red-cell colour
    # is the median of the middle class; fixed cut-offs fail on uneven or tinted backgrounds.
    try:
        low, high = filters.threshold_multiotsu(total, classes=3)
    except ValueError:  # (nearly) uniform image
        low, high = np.inf, np.inf
    low = max(float(low), params.stained_od)
    stained = total > low
    rbc = red_cell_colour(od[stained & (total <= high)], total.size, params)
    e = rbc.astype(np.float32)
    od -= (od @ e)[..., None] * e
    signal = np.sqrt(np.einsum("...c,...c->...", od, od))
    # Otsu over the stained pixels only (the background would outvote the few nuclei), clipped
    # at a high percentile: a few extreme pixels (a coloured border line) stretch the histogram.
    values = signal[stained]
    if values.size:
        values = np.minimum(values, np.percentile(values, 99.5))
    if values.size and np.ptp(values) > 0:
        thr = max(params.otsu_factor * float(filters.threshold_otsu(values)), params.min_signal)
    else:  # nothing stands out from a (nearly) uniform field: no nucleus, whatever its size
        thr = float("inf")
    return FieldStats(tuple(float(v) for v in white), thr, tuple(float(v) for v in rbc))


def segment_wbc(
    rgb: np.ndarray,
    pixel_size_um: float | None = None,
    params: SegmentationParams | None = None,
    stats: FieldStats | None = None,
    pixel_size_source: str = "given",
) -> Segmentation:
    """Segment the white blood cells of one smear field.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(H, W, 3) uint8`` image (see :func:`napari_ddrnet.image_input.to_rgb_uint8`).
    pixel_size_um : float, optional
        Micrometres per pixel (checked against the plausible bounds). When ``None`` it is
        estimated from the red cells, else the default is used
        (:func:`napari_ddrnet.scale.resolve_pixel_size`, the one place that decides).
    params : SegmentationParams, optional
        Sizes and thresholds; the defaults suit Romanowsky-stained peripheral blood.
    stats : FieldStats, optional
        White point and threshold; default: :func:`field_statistics` of ``rgb``. Tiles of a large
        image pass the whole image's statistics so that every tile is segmented alike.
    pixel_size_source : str
        Where a passed ``pixel_size_um`` came from (``"given"``, ``"metadata"``,
        ``"estimated"``, ``"default"``; see :func:`napari_ddrnet.scale.resolve_pixel_size`).
        With an estimated or default pixel size the upper nucleus-area limit is relaxed by
        ``params.unverified_area_factor``.

    Returns
    -------
    Segmentation
        Label images at the input resolution and the per-cell table. An empty field gives an
        empty table and all-zero labels, not an error.
    """
    params = params or SegmentationParams()
    shape = rgb.shape[:2]
    if pixel_size_um is None:
        resolved = resolve_pixel_size(rgb)
        pixel_size_um, source = resolved.um, resolved.source
    else:
        if pixel_size_source not in PIXEL_SIZE_SOURCES:
            raise ValueError(f"pixel_size_source must be one of {PIXEL_SIZE_SOURCES}, "
                             f"got {pixel_size_source!r}")
        pixel_size_um, source = check_pixel_size(pixel_size_um), pixel_size_source
    if source in ("estimated", "default"):  # an unconfirmed scale may be 2-3x off
        params = replace(params, max_nucleus_area_um2=params.max_nucleus_area_um2
                         * params.unverified_area_factor)

    factor = pixel_size_um / WORK_UM_PER_PX  # input px -> working px
    # Statistics from a subsample (as for tiles of a large image): plenty for a percentile,
    # a median colour and two Otsu thresholds, and it halves the time of a 640x480 field.
    stats = stats or field_statistics(rgb, params, max_pixels=STATS_PIXELS)
    chroma = nucleus_chroma(rgb, stats.white, stats.red_cell_od)
    # Resized or re-encoded fields often carry a coloured line along the border; replicate the
    # pixels next to it instead (harmless on real content, e.g. the edge of a tile).
    b = BORDER_PX
    if min(shape) > 4 * b:
        chroma = np.pad(chroma[b:-b, b:-b], b, mode="edge")
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

    # Group the lobes of one segmented nucleus: components closer than lobe_gap_um merge, and
    # small lobes (a segmented neutrophil's) reach further, up to lobe_reach_um.
    gap = max(1, int(round(p.lobe_gap_um * um / 2)))
    grouped = ndi.binary_dilation(nuc, structure=morphology.disk(gap))
    if p.lobe_reach_um > p.lobe_gap_um:
        comp = measure.label(nuc)
        area = np.bincount(comp.ravel())
        lobe = (p.min_lobe_area_um2 * um * um <= area) & (area < p.max_lobe_area_um2 * um * um)
        lobe[0] = False
        for r in measure.regionprops(np.where(lobe[comp], comp, 0)):
            # A lone round nucleus (a lymphocyte's) is not a lobe, even when small.
            lobe[r.label] = not (r.solidity > ROUND_SOLIDITY
                                 and r.eccentricity < ROUND_ECCENTRICITY)
        small = lobe[comp] & nuc
        reach = max(1, int(round((p.lobe_reach_um - p.lobe_gap_um / 2) * um)))
        grouped |= ndi.binary_dilation(small, structure=morphology.disk(reach))
    groups = measure.label(grouped)
    nuc_labels = np.where(nuc, groups, 0).astype(np.int32)

    min_a = p.min_nucleus_area_um2 * um * um
    max_a = p.max_nucleus_area_um2 * um * um
    keep = np.zeros(groups.max() + 1, bool)
    for r in measure.regionprops(nuc_labels, intensity_image=chroma):
        if min_a <= r.area <= max_a and r.intensity_mean >= p.min_mean_signal * thr:
            keep[r.label] = True
    nuc_labels = np.where(keep[nuc_labels], nuc_labels, 0)
    nuc_labels, _, _ = segmentation.relabel_sequential(nuc_labels)
    nuc_labels = nuc_labels.astype(np.int32)
    if nuc_labels.max() == 0:
        return nuc_labels, nuc_labels

    return nuc_labels, _cells_from_nuclei(nuc_labels, p, um)


def _cells_from_nuclei(nuc_labels: np.ndarray, p: SegmentationParams, um: float) -> np.ndarray:
    """Cell labels: the convex hull of each nucleus grown by the cytoplasm rim; expand_labels
    splits touching cells half-way between their nuclei instead of merging them."""
    hulls = np.zeros_like(nuc_labels)
    for r in measure.regionprops(nuc_labels):
        r0, c0, r1, c1 = r.bbox
        sub = hulls[r0:r1, c0:c1]
        sub[r.image_convex & (sub == 0)] = r.label
    cells = segmentation.expand_labels(hulls, distance=p.cytoplasm_um * um)
    return cells.astype(np.int32)


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
        return empty_geometry()
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
    return pd.DataFrame(rows, columns=GEOMETRY_COLUMNS)
