"""The neck split as it was tried in ``segment.py`` on 2026-12-06 and not kept
(docs/segmentation.md): ``segment._split_touching_nuclei`` and ``_merge_wide_necks``, moved
here unchanged but for their parameters. :func:`install` patches it over the shipped
``segment._segment_working`` at the point where it ran (after the area and signal filters,
before the convex hulls), so every script in this folder can rerun it.
"""

import numpy as np
from scipy import ndimage as ndi
from skimage import feature, measure, segmentation

import napari_ddrnet.segment as S

_shipped = S._segment_working


def split_touching_nuclei(nuc_labels: np.ndarray, depth_um: float, max_ratio: float,
                          um: float) -> np.ndarray:
    """Cut nucleus groups that are two round nuclei pressed together into one group each.

    Only a group that is one connected component is considered (a granulocyte's lobes show as
    several components, grouped by distance). Its distance transform is cut by a watershed
    from maxima at least ``depth_um`` deep; neighbouring parts whose neck is wider than
    ``max_ratio`` x the shallower depth are merged back, widest neck first.
    """
    depth = depth_um * um
    if not np.isfinite(depth):
        return nuc_labels
    out = nuc_labels
    next_label = int(nuc_labels.max()) + 1
    for r in measure.regionprops(nuc_labels):
        if r.area < 2 * np.pi * depth * depth:  # too small to hold two discs that deep
            continue
        mask = np.pad(r.image, 1)
        if measure.label(mask).max() != 1:
            continue
        dist = ndi.distance_transform_edt(mask)
        if dist.max() < depth:
            continue
        peaks = feature.peak_local_max(dist, min_distance=max(1, int(depth)),
                                       threshold_abs=depth, labels=mask.astype(np.int32),
                                       exclude_border=False)
        if len(peaks) < 2:
            continue
        markers = np.zeros(mask.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        parts = merge_wide_necks(segmentation.watershed(-dist, markers, mask=mask), dist,
                                  max_ratio)
        ids = np.unique(parts[parts > 0])
        if len(ids) < 2:
            continue
        if out is nuc_labels:
            out = nuc_labels.copy()
        r0, c0, r1, c1 = r.bbox
        sub, inner = out[r0:r1, c0:c1], parts[1:-1, 1:-1]
        for v in ids[1:]:
            sub[inner == v] = next_label
            next_label += 1
    return out


def merge_wide_necks(parts: np.ndarray, dist: np.ndarray, max_ratio: float) -> np.ndarray:
    """Merge neighbouring watershed parts whose neck (the largest distance value on either
    side of the line between them) exceeds ``max_ratio`` x the shallower part's depth."""
    while True:
        ids = np.unique(parts[parts > 0])
        if len(ids) < 2:
            return parts
        depth = dict(zip(ids, ndi.maximum(dist, parts, ids), strict=True))
        neck: dict[tuple[int, int], float] = {}
        # every 8-neighbour pair once: right, down, down-right, down-left
        for a_sl, b_sl in (((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
                           ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
                           ((slice(None, -1), slice(None, -1)), (slice(1, None), slice(1, None))),
                           ((slice(None, -1), slice(1, None)), (slice(1, None), slice(None, -1)))):
            a, b = parts[a_sl], parts[b_sl]
            edge = (a > 0) & (b > 0) & (a != b)
            d = np.maximum(dist[a_sl][edge], dist[b_sl][edge])
            for x, y, v in zip(a[edge], b[edge], d, strict=True):
                key = (min(x, y), max(x, y))
                neck[key] = max(neck.get(key, 0.0), float(v))
        if not neck:
            return parts
        ratio, (x, y) = max((v / min(depth[k[0]], depth[k[1]]), k) for k, v in neck.items())
        if ratio <= max_ratio:
            return parts
        parts = np.where(parts == y, x, parts)


def install(depth_um: float = 3.75, max_ratio: float = 0.4) -> None:
    """Run the split inside ``segment_wbc`` from now on (``depth_um`` inf: the shipped code)."""

    def segment_working(chroma, thr, p, um):
        nuc, cells = _shipped(chroma, thr, p, um)
        split = split_touching_nuclei(nuc, depth_um, max_ratio, um)
        if split is nuc:
            return nuc, cells
        return split, S._cells_from_nuclei(split, p, um)

    S._segment_working = segment_working
