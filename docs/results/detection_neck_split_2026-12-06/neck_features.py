"""Neck features of every nucleus component that a watershed of its distance transform would
cut (development part of TXL-PBC, estimated pixel size), with how many expert WBC box centres
fall in the shipped cell box that holds it: 2+ means two white cells were merged.

Usage (project root)::

    PYTHONPATH=src:. python docs/results/detection_neck_split_2026-12-06/neck_features.py PART
"""

import sys

import numpy as np
from scipy import ndimage as ndi
from skimage import feature, filters, measure, segmentation, transform

import napari_ddrnet.segment as S
from napari_ddrnet.scale import resolve_pixel_size
from training.detection_eval import load_txl_fields

R_PEAK = 1.5  # µm: the shallowest part considered


def parts_of(mask, um):
    """Watershed parts of one component; per adjacent pair: depths, neck, areas (µm)."""
    mask = np.pad(mask, 1)
    dist = ndi.distance_transform_edt(mask)
    peaks = feature.peak_local_max(dist, min_distance=max(1, int(R_PEAK * um)),
                                   threshold_abs=R_PEAK * um, labels=mask.astype(int),
                                   exclude_border=False)
    if len(peaks) < 2:
        return []
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    ws = segmentation.watershed(-dist, markers, mask=mask)
    # merge the pair with the widest neck relative to depth until two parts remain
    while True:
        labs = [v for v in np.unique(ws) if v]
        depth = {v: dist[ws == v].max() for v in labs}
        pairs = []
        for a in labs:
            ga = ndi.binary_dilation(ws == a, np.ones((3, 3), bool))
            for b in labs:
                if b > a and (ga & (ws == b)).any():
                    gb = ndi.binary_dilation(ws == b, np.ones((3, 3), bool))
                    neck = max(dist[ga & (ws == b)].max(), dist[gb & (ws == a)].max())
                    pairs.append((neck / min(depth[a], depth[b]), a, b, neck))
        if len(labs) <= 2 or not pairs:
            break
        _, a, b, _ = max(pairs)
        ws[ws == b] = a
    if len(pairs) != 1:
        return []
    ratio, a, b, neck = pairs[0]
    ar = [(ws == v).sum() / um**2 for v in (a, b)]
    return [dict(depth_min=min(depth[a], depth[b]) / um, depth_max=max(depth[a], depth[b]) / um,
                 neck=neck / um, ratio=ratio, area_min=min(ar), area_max=max(ar))]


for f in load_txl_fields(sys.argv[1]):
    rgb = f.rgb()
    res = resolve_pixel_size(rgb)
    p = S.SegmentationParams()
    if res.source in ("estimated", "default"):
        from dataclasses import replace
        p = replace(p, max_nucleus_area_um2=p.max_nucleus_area_um2 * p.unverified_area_factor)
    seg = S.segment_wbc(rgb, res.um, params=p, pixel_size_source=res.source)
    stats = S.field_statistics(rgb, p, max_pixels=S.STATS_PIXELS)
    chroma = S.nucleus_chroma(rgb, stats.white, stats.red_cell_od)
    b = S.BORDER_PX
    chroma = np.pad(chroma[b:-b, b:-b], b, mode="edge")
    factor = res.um / S.WORK_UM_PER_PX
    ws_shape = (max(8, round(rgb.shape[0] * factor)), max(8, round(rgb.shape[1] * factor)))
    if abs(factor - 1) > 0.05:
        chroma = transform.resize(chroma, ws_shape, order=1, anti_aliasing=factor < 1,
                                  preserve_range=True)
    um = 1 / S.WORK_UM_PER_PX
    chroma = filters.gaussian(chroma, sigma=0.4 * um, preserve_range=True)
    nuc_w, _ = S._segment_working(chroma, stats.threshold, p, um)
    comp = measure.label(nuc_w > 0)
    gt_c = np.c_[(f.wbc[:, 0] + f.wbc[:, 2]) / 2, (f.wbc[:, 1] + f.wbc[:, 3]) / 2] * factor
    for r in measure.regionprops(comp):
        for d in parts_of(r.image, um):
            r0, c0, r1, c1 = r.bbox
            pad = 1.8 * um
            inside = ((gt_c[:, 0] > r0 - pad) & (gt_c[:, 0] < r1 + pad)
                      & (gt_c[:, 1] > c0 - pad) & (gt_c[:, 1] < c1 + pad)).sum()
            feats = " ".join(f"{k}={v:.2f}" for k, v in d.items())
            print(f.source, f.image[:8], int(inside), feats, flush=True)
