"""``analyze``: the Qt-free pipeline — segment, crop, classify, count — tiled for large images."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .classes import DEFAULT_MIN_CONFIDENCE
from .classify import Classifier, check_min_confidence, probabilities_to_table
from .crop import crop_cells
from .image_input import check_has_colour, check_rgb_shape, to_rgb_uint8, value_range
from .report import counts_table
from .sampling import sample_windows
from .scale import PixelSize, resolve_pixel_size
from .schema import empty_geometry, with_geometry_dtypes
from .segment import SegmentationParams, field_statistics, segment_wbc

#: Images with more pixels than this are processed tile by tile.
TILE_PIXELS = 4096 * 4096
#: Side of one tile's core (pixels); the overlap is added around it.
TILE_SIZE = 2048
#: Largest cell the tiler must see whole, micrometres (a large monocyte with cytoplasm).
MAX_CELL_UM = 30.0


@dataclass
class AnalysisResult:
    """What :func:`analyze` returns.

    Attributes
    ----------
    cells : pandas.DataFrame
        One row per cell: geometry (:data:`napari_ddrnet.schema.GEOMETRY_COLUMNS`), ``class``,
        ``confidence`` and ``prob_<class>``.
    counts : pandas.DataFrame
        ``class``, ``count``, ``percent``, ``basis`` (see
        :func:`napari_ddrnet.report.counts_table`).
    labels : numpy.ndarray or None
        ``int32`` cell label image (ids = ``cells.cell_id``); ``None`` if not requested.
    pixel_size : PixelSize
        Micrometres per pixel used, where it came from (``given``, ``metadata``, ``estimated``
        or ``default``) and, for a fallback, why.
    classes : tuple of str
        Classes of the model used.
    crops : numpy.ndarray or None
        The model's input crops, one per cell (``keep_crops=True``), e.g. to re-classify them
        with a classifier adapted to the lab (:func:`reclassify`).
    """

    cells: pd.DataFrame
    counts: pd.DataFrame
    labels: np.ndarray | None
    pixel_size: PixelSize
    classes: tuple[str, ...]
    crops: np.ndarray | None = None

    @property
    def pixel_size_um(self) -> float:
        """Micrometres per pixel used for this image."""
        return self.pixel_size.um

    @property
    def pixel_size_source(self) -> str:
        """``given``, ``metadata``, ``estimated`` or ``default``."""
        return self.pixel_size.source


def analyze(
    image,
    pixel_size_um: float | None = None,
    classifier: Classifier | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    **options,
) -> AnalysisResult:
    """Find, classify and count the white cells of a smear image.

    Parameters
    ----------
    image : array-like
        ``(H, W, 3)`` RGB (or RGBA / 16-bit / float, converted) as numpy, dask or zarr. Lazy
        arrays and images over :data:`TILE_PIXELS` are processed tile by tile with overlap, so
        memory stays bounded; cells on tile seams are counted once.
    pixel_size_um : float, optional
        Micrometres per pixel set by the user; it wins over everything else.
    classifier : Classifier, optional
        A loaded classifier (reuse one across images); default: the shipped weights.
    progress : callable, optional
        ``progress(done, total)`` after each step (tiles, then classification).
    **options
        ``pixel_size_metadata`` (the file's calibration, used when no pixel size is given;
        without either the pixel size is estimated from the red cells, else a default, and the
        result says which: :func:`napari_ddrnet.scale.resolve_pixel_size`), ``pixel_size``
        (a :class:`~napari_ddrnet.scale.PixelSize` decided already, e.g. a folder's
        :func:`~napari_ddrnet.scale.pooled_pixel_size`: used as it is, source and note too),
        ``device``, ``batch_size`` (for the default classifier), ``min_confidence`` (cells whose
        top probability is lower are ``unidentified``, default 0.5), ``return_labels`` (build
        the full-size label image, default True), ``keep_crops`` (keep the model's input
        crops in the result, for :func:`reclassify`), ``crop_sample`` (offered every batch of
        crops, e.g. a bounded :class:`~napari_ddrnet.shift_score.CropSample` of a
        slide), ``tile_size`` (force tiling), ``params``
        (:class:`~napari_ddrnet.segment.SegmentationParams`); see :func:`iter_analyze`.

    Returns
    -------
    AnalysisResult
    """
    unknown = sorted(set(options) - _ITER_OPTIONS)
    if unknown:  # else Python's error would name iter_analyze, which the caller never called
        hint = (" For an image of one centred cell use napari_ddrnet.analyze_single_cell."
                if "single_cell" in unknown else "")
        raise TypeError(f"analyze() got unknown option(s) {', '.join(unknown)}.{hint}")
    gen = iter_analyze(image, pixel_size_um, classifier, **options)
    while True:
        try:
            done, total = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(done, total)


def iter_analyze(
    image,
    pixel_size_um: float | None = None,
    classifier: Classifier | None = None,
    *,
    pixel_size_metadata: float | None = None,
    device: str = "auto",
    batch_size: int = 64,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    return_labels: bool = True,
    keep_crops: bool = False,
    tile_size: int | None = None,
    params: SegmentationParams | None = None,
    labels_out=None,
    crop_sample=None,
    pixel_size: PixelSize | None = None,
) -> Generator[tuple[int, int], None, AnalysisResult]:
    """:func:`analyze` as a generator: yields ``(done, total)`` steps, returns the result.

    Stopping the generator (``close()``, or a napari worker's ``quit()``) cancels the analysis
    between tiles.

    ``labels_out``, when given, is an ``(H, W)`` integer array-like (e.g. a chunked
    ``zarr.Array`` on disk) that each tile's labels are written into, so the label image of a
    whole slide never has to fit in memory; the result's ``labels`` is then that array.

    ``crop_sample``, when given, is any object with an ``add(crops)`` method (e.g.
    :class:`napari_ddrnet.shift_score.CropSample`): each batch of crops is offered to it as it
    is classified, so a slide whose crops cannot all be kept can still be checked on a
    bounded sample of them.
    """
    check_min_confidence(min_confidence)
    lazy = not isinstance(image, np.ndarray)
    # In-memory arrays are converted once (channel order, dtype); lazy arrays are read tile by
    # tile and must already be (H, W, C), scaled by one image-wide range read from a sample.
    if lazy:
        check_rgb_shape(tuple(image.shape))
        windows = sample_windows(image)
        vrange = value_range(windows)
        # The windows serve only the field statistics: not held through the run (nine
        # 1024 px windows and their RGB copy are ~56 MB, more than a tile's working arrays).
        stats = field_statistics(
            np.concatenate([to_rgb_uint8(w, vrange) for w in windows], axis=1), params)
        del windows
        rgb = None
    else:
        rgb = to_rgb_uint8(image)
        vrange = stats = None
    if rgb is not None:  # a slide's sampled windows may all be glass: not judged on them
        check_has_colour(rgb)
    source_image = rgb if rgb is not None else image
    px_info = pixel_size or resolve_pixel_size(source_image, given=pixel_size_um,
                                               metadata=pixel_size_metadata)
    px = px_info.um
    classifier = classifier or Classifier(device=device, batch_size=batch_size)
    h, w = source_image.shape[:2]
    tiled = tile_size is not None or lazy or h * w > TILE_PIXELS
    if not tiled:
        tiles = [(0, 0, h, w, 0, 0, h, w)]
    else:
        tiles = _tiles(h, w, tile_size or TILE_SIZE, _overlap_px(px, classifier.crop_fov_um))
    if stats is None:
        stats = field_statistics(rgb, params)
    total = len(tiles) + 1

    if labels_out is not None:
        if tuple(labels_out.shape) != (h, w):
            raise ValueError(f"labels_out has shape {tuple(labels_out.shape)}, "
                             f"the image is {(h, w)}")
        labels = labels_out
    else:
        labels = np.zeros((h, w), np.int32) if return_labels else None
    geo_parts, prob_parts, pending, kept = [], [], [], []
    n_pending = 0
    next_id = 1
    for i, (r0, c0, r1, c1, *_core) in enumerate(tiles):
        if rgb is not None:
            tile = rgb[r0:r1, c0:c1]
        else:
            tile = to_rgb_uint8(np.asarray(image[r0:r1, c0:c1]), vrange)
        seg = segment_wbc(tile, px, params, stats, pixel_size_source=px_info.source)
        cells = _core_cells(seg.cells, tiles[i])
        if len(cells):
            pending.append(crop_cells(tile, cells, px, classifier.input_size, stats.white,
                                      classifier.crop_fov_um))
            n_pending += len(cells)
            new_ids = np.arange(next_id, next_id + len(cells))
            if labels is not None:
                lut = np.zeros(int(seg.labels.max()) + 1, np.int32)
                lut[cells["cell_id"].to_numpy()] = new_ids
                sub = lut[seg.labels]
                if isinstance(labels, np.ndarray):
                    np.copyto(labels[r0:r1, c0:c1], sub, where=sub > 0)
                else:  # read-modify-write: neighbouring tiles' cells reach into the overlap
                    region = np.asarray(labels[r0:r1, c0:c1])
                    np.copyto(region, sub, where=sub > 0, casting="unsafe")
                    labels[r0:r1, c0:c1] = region
            cells["cell_id"] = new_ids
            geo_parts.append(_to_global(cells, r0, c0, h, w))
            next_id += len(cells)
        # Classify in full batches across tiles; crops never pile up for a whole slide.
        if n_pending >= classifier.batch_size:
            batch = np.concatenate(pending)
            prob_parts.append(classifier.predict_proba(batch))
            if keep_crops:
                kept.append(batch)
            if crop_sample is not None:
                crop_sample.add(batch)
            pending, n_pending = [], 0
        yield i + 1, total
    if pending:
        batch = np.concatenate(pending)
        prob_parts.append(classifier.predict_proba(batch))
        if keep_crops:
            kept.append(batch)
        if crop_sample is not None:
            crop_sample.add(batch)

    geo = pd.concat(geo_parts, ignore_index=True) if geo_parts else empty_geometry()
    probs = (np.concatenate(prob_parts) if prob_parts
             else np.zeros((0, len(classifier.classes)), np.float32))
    pred = probabilities_to_table(probs, classifier.classes, min_confidence)
    cells = pd.concat([geo.reset_index(drop=True), pred], axis=1)
    cells = with_geometry_dtypes(cells)
    yield total, total
    return AnalysisResult(cells, counts_table(cells["class"]), labels, px_info,
                          tuple(classifier.classes),
                          crops=_kept_crops(kept, classifier) if keep_crops else None)


def _core_cells(cells: pd.DataFrame, tile) -> pd.DataFrame:
    """The cells of a tile whose centroid lies in its core: each cell of a slide exactly once."""
    if not len(cells):
        return cells
    r0, c0, _, _, k0, l0, k1, l1 = tile
    gr = cells["centroid_row"] + r0
    gc = cells["centroid_col"] + c0
    keep = ((gr >= k0) & (gr < k1) & (gc >= l0) & (gc < l1)).to_numpy()
    return cells[keep].copy()


def _to_global(cells: pd.DataFrame, r0: int, c0: int, h: int, w: int) -> pd.DataFrame:
    """Tile geometry shifted to image coordinates, ``touches_border`` against the image."""
    for col, off in (("centroid_row", r0), ("min_row", r0), ("max_row", r0),
                     ("centroid_col", c0), ("min_col", c0), ("max_col", c0)):
        cells[col] = cells[col] + off
    cells["touches_border"] = ((cells["min_row"] == 0) | (cells["min_col"] == 0)
                               | (cells["max_row"] == h) | (cells["max_col"] == w))
    return cells


@dataclass(frozen=True)
class SlidePlan:
    """Everything the tiles of one lazy slide share, so they can be analysed apart.

    Made by :func:`plan_slide` from a few sample windows; small and picklable (it is sent with
    every tile task of :mod:`napari_ddrnet.cohort`).

    Attributes
    ----------
    shape : tuple of int
        ``(H, W)`` of the slide.
    pixel_size : PixelSize
        Pixel size used for every tile.
    vrange : tuple or None
        Value range every tile is scaled by to ``uint8`` (``None``: already ``uint8``-ready).
    stats : FieldStats
        White point, red-cell colour and nucleus threshold from the sample windows.
    tiles : tuple of tuple
        ``(r0, c0, r1, c1, core_r0, core_c0, core_r1, core_c1)`` per tile, in the serial order.
    params : SegmentationParams or None
        Segmentation parameters.
    """

    shape: tuple[int, int]
    pixel_size: PixelSize
    vrange: tuple | None
    stats: object
    tiles: tuple
    params: SegmentationParams | None = None


@dataclass
class TileCells:
    """What :func:`analyze_tile` returns for one tile.

    Attributes
    ----------
    index : int
        The tile's position in :attr:`SlidePlan.tiles`.
    cells : pandas.DataFrame
        Geometry of the tile's core cells in slide coordinates; ``cell_id`` numbered from 1
        within the tile (renumbered by :func:`assemble_tiles`).
    probs : numpy.ndarray
        ``(n, n_classes)`` class probabilities of those cells, same order.
    crops : numpy.ndarray or None
        The model's input crops of those cells (``analyze_tile(..., keep_crops=True)``).
    """

    index: int
    cells: pd.DataFrame
    probs: np.ndarray
    crops: np.ndarray | None = None


def plan_slide(image, pixel_size_um: float | None = None, *, crop_fov_um: float = 0.0,
               pixel_size_metadata: float | None = None, tile_size: int | None = None,
               params: SegmentationParams | None = None) -> SlidePlan:
    """The tiling and shared statistics :func:`iter_analyze` would use for a lazy ``image``.

    Parameters
    ----------
    image : array-like
        Lazy ``(H, W, C)`` array (dask, zarr), as :func:`napari_ddrnet.image_io.read_image`
        returns for large TIFFs.
    pixel_size_um, pixel_size_metadata, tile_size, params
        As for :func:`analyze`.
    crop_fov_um : float
        The classifier's crop field of view (``Classifier.crop_fov_um``); sets the overlap.

    Returns
    -------
    SlidePlan
    """
    if isinstance(image, np.ndarray):
        raise ValueError("plan_slide is for lazy arrays; analyse numpy images with analyze()")
    check_rgb_shape(tuple(image.shape))
    windows = sample_windows(image)
    vrange = value_range(windows)
    # Released before the pixel-size estimate reads its own windows (as in iter_analyze).
    stats = field_statistics(
        np.concatenate([to_rgb_uint8(w, vrange) for w in windows], axis=1), params)
    del windows
    px_info = resolve_pixel_size(image, given=pixel_size_um, metadata=pixel_size_metadata)
    h, w = image.shape[:2]
    tiles = _tiles(h, w, tile_size or TILE_SIZE, _overlap_px(px_info.um, crop_fov_um))
    return SlidePlan((h, w), px_info, vrange, stats, tuple(tiles), params)


def analyze_tile(image, plan: SlidePlan, index: int, classifier: Classifier,
                 keep_crops: bool = False) -> TileCells:
    """Segment, crop and classify tile ``index`` of ``plan``; the cells its core owns.

    ``image`` is the slide (any array-like; only the tile's window is read). Together with
    :func:`assemble_tiles` this gives the cells, ids and row order of :func:`analyze`'s tiled
    run, with each tile analysable in a different process. ``keep_crops`` returns the tile's
    crops too (the caller should not send them far: a slide's would not fit in memory).
    """
    h, w = plan.shape
    r0, c0, r1, c1 = plan.tiles[index][:4]
    px = plan.pixel_size.um
    tile = to_rgb_uint8(np.asarray(image[r0:r1, c0:c1]), plan.vrange)
    seg = segment_wbc(tile, px, plan.params, plan.stats, pixel_size_source=plan.pixel_size.source)
    cells = _core_cells(seg.cells, plan.tiles[index])
    if not len(cells):
        return TileCells(index, empty_geometry(),
                         np.zeros((0, len(classifier.classes)), np.float32),
                         _kept_crops([], classifier) if keep_crops else None)
    crops = crop_cells(tile, cells, px, classifier.input_size, plan.stats.white,
                       classifier.crop_fov_um)
    probs = classifier.predict_proba(crops)
    cells["cell_id"] = np.arange(1, len(cells) + 1)
    return TileCells(index, _to_global(cells, r0, c0, h, w), probs,
                     crops if keep_crops else None)


def assemble_tiles(plan: SlidePlan, parts, classes, min_confidence: float =
                   DEFAULT_MIN_CONFIDENCE) -> AnalysisResult:
    """One slide's :class:`AnalysisResult` from the :class:`TileCells` of all its tiles.

    ``parts`` may come in any order; they are put in tile order and the cells numbered
    1..N in that order, as :func:`iter_analyze` numbers them. ``labels`` is ``None``.
    """
    check_min_confidence(min_confidence)
    parts = sorted(parts, key=lambda p: p.index)
    if [p.index for p in parts] != list(range(len(plan.tiles))):
        raise ValueError(f"assemble_tiles needs every tile of the plan once: got "
                         f"{len(parts)} parts for {len(plan.tiles)} tiles")
    geo_parts = [p.cells for p in parts if len(p.cells)]
    geo = pd.concat(geo_parts, ignore_index=True) if geo_parts else empty_geometry()
    geo["cell_id"] = np.arange(1, len(geo) + 1)
    probs = (np.concatenate([p.probs for p in parts]) if parts
             else np.zeros((0, len(classes)), np.float32))
    pred = probabilities_to_table(probs, classes, min_confidence)
    cells = with_geometry_dtypes(pd.concat([geo.reset_index(drop=True), pred], axis=1))
    return AnalysisResult(cells, counts_table(cells["class"]), None, plan.pixel_size,
                          tuple(classes))


def _kept_crops(kept: list[np.ndarray], classifier: Classifier) -> np.ndarray:
    size = classifier.input_size
    return np.concatenate(kept) if kept else np.zeros((0, size, size, 3), np.uint8)


def reclassify(result: AnalysisResult, classifier: Classifier,
               min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> AnalysisResult:
    """``result`` with its cells classified again by ``classifier`` from the kept crops.

    Used by the "new lab" mode: the images are analysed once keeping their crops, a
    classifier is adapted to all of them (:meth:`Classifier.adapted_to_lab`), and each result
    is re-classified; geometry, pixel size and labels are unchanged.
    """
    if result.crops is None:
        raise ValueError("the result kept no crops: analyse with keep_crops=True")
    pred = probabilities_to_table(classifier.predict_proba(result.crops), classifier.classes,
                                  min_confidence)
    geo = result.cells.drop(columns=[c for c in result.cells.columns
                                     if c in pred.columns or c.startswith("prob_")])
    cells = pd.concat([geo.reset_index(drop=True), pred], axis=1)
    return AnalysisResult(cells, counts_table(cells["class"]), result.labels,
                          result.pixel_size, tuple(classifier.classes), result.crops)


def count_steps(image, tile_size: int | None = None) -> int:
    """Number of ``(done, total)`` steps :func:`iter_analyze` will yield for ``image``."""
    h, w = image.shape[:2]
    lazy = not isinstance(image, np.ndarray)
    if tile_size is None and not lazy and h * w <= TILE_PIXELS:
        return 2
    size = tile_size or TILE_SIZE
    return -(-h // size) * -(-w // size) + 1


def _overlap_px(px_um: float, crop_fov_um: float = 0.0) -> int:
    """Overlap that shows every cell whole and its crop (half the model's field of view
    around the centroid) with real pixels, as an untiled run would."""
    return int(np.ceil(max(MAX_CELL_UM, crop_fov_um / 2) / px_um)) + 8


#: The keyword-only options :func:`analyze` passes on to :func:`iter_analyze`.
_ITER_OPTIONS = frozenset(
    n for n, p in inspect.signature(iter_analyze).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _tiles(h: int, w: int, size: int, overlap: int):
    """Tiles as ``(r0, c0, r1, c1, core_r0, core_c0, core_r1, core_c1)`` in image pixels."""
    out = []
    for k0 in range(0, h, size):
        for l0 in range(0, w, size):
            k1, l1 = min(k0 + size, h), min(l0 + size, w)
            out.append((max(0, k0 - overlap), max(0, l0 - overlap), min(h, k1 + overlap),
                        min(w, l1 + overlap), k0, l0, k1, l1))
    return out


__all__ = ["AnalysisResult", "SlidePlan", "TileCells", "analyze", "analyze_tile", "assemble_tiles",
           "count_steps", "iter_analyze", "plan_slide", "reclassify"]
