"""Prototype: split touching nuclei at a neck (docs/segmentation.md, pre-registered 2026-12-06).

Usage (project root)::

    PYTHONPATH=src:. python docs/results/detection_neck_split_2026-12-06/neck_split.py \
        R_MIN A_PART NECK_RATIO PARTS [bccd]

``R_MIN 0`` runs the shipped code. Prints tp/fp/fn per source (estimated pixel size) and, with
``bccd``, BCCD ``train`` and ``test``.
"""

import os
import sys

import numpy as np
from scipy import ndimage as ndi
from skimage import feature, measure, segmentation

import napari_ddrnet.segment as S

R_MIN, A_PART, RATIO = (float(v) for v in sys.argv[1:4])
#: With ``SOLE=1`` in the environment, only a nucleus group made of one component is split
#: (the lobes of a granulocyte show as several components; two touching round nuclei as one).
SOLE = os.environ.get("SOLE") == "1"
shipped = S._segment_working


def split_at_necks(nuc, um):
    """Component labels of ``nuc`` with touching round nuclei cut apart at a narrow neck."""
    comp = measure.label(nuc)
    out = comp.copy()
    nxt = comp.max() + 1
    r_min, a_part = R_MIN * um, A_PART * um * um
    for r in measure.regionprops(comp):
        if r.area < 2 * a_part:
            continue
        mask = np.pad(r.image, 1)
        dist = ndi.distance_transform_edt(mask)
        if dist.max() < r_min:
            continue
        peaks = feature.peak_local_max(dist, min_distance=max(1, int(r_min)),
                                       threshold_abs=r_min, labels=mask.astype(int),
                                       exclude_border=False)
        if len(peaks) < 2:
            continue
        markers = np.zeros(mask.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        ws = segmentation.watershed(-dist, markers, mask=mask)
        while True:
            labs = [v for v in np.unique(ws) if v]
            if len(labs) < 2:
                break
            depth = {v: dist[ws == v].max() for v in labs}
            area = {v: (ws == v).sum() for v in labs}
            # neck between a and b: deepest pixel of a that touches b (and vice versa)
            worst, pair = -np.inf, None
            for a in labs:
                grown = ndi.binary_dilation(ws == a, np.ones((3, 3), bool))
                for b in labs:
                    if b <= a:
                        continue
                    line = grown & (ws == b)
                    if not line.any():
                        continue
                    neck = max(dist[line].max(), dist[ndi.binary_dilation(
                        ws == b, np.ones((3, 3), bool)) & (ws == a)].max())
                    bad = neck / min(depth[a], depth[b])
                    if min(area[a], area[b]) < a_part or min(depth[a], depth[b]) < r_min:
                        bad = np.inf
                    if bad > worst:
                        worst, pair = bad, (a, b)
            if pair is None or worst <= RATIO:
                break
            ws[ws == pair[1]] = pair[0]
        labs = [v for v in np.unique(ws) if v]
        if len(labs) < 2:
            continue
        r0, c0, r1, c1 = r.bbox
        sub = out[r0:r1, c0:c1]
        inner = ws[1:-1, 1:-1]
        for v in labs[1:]:
            sub[inner == v] = nxt
            nxt += 1
    return out, comp


def segment_working(chroma, thr, p, um):
    if R_MIN <= 0:
        return shipped(chroma, thr, p, um)
    nuc_labels, cells = shipped(chroma, thr, p, um)
    if nuc_labels.max() == 0:
        return nuc_labels, cells
    nuc = nuc_labels > 0
    parts, comp = split_at_necks(nuc, um)
    split = parts != comp
    if not split.any():
        return nuc_labels, cells
    # Groups that hold a split component: every nucleus pixel goes to its nearest part.
    out = nuc_labels.copy()
    nxt = out.max() + 1
    for g in np.unique(nuc_labels[split]):
        grp = nuc_labels == g
        comps_in = np.unique(comp[grp & split])
        if SOLE and len(np.unique(comp[grp])) > 1:
            continue
        seeds = np.where(grp & np.isin(comp, comps_in), parts, 0)
        ids = [v for v in np.unique(seeds) if v]
        if len(ids) < 2:
            continue
        _, (ri, ci) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
        near = seeds[ri, ci]
        for v in ids[1:]:
            out[grp & (near == v)] = nxt
            nxt += 1
    out = out.astype(np.int32)
    return out, S._cells_from_nuclei(out, p, um)


S._segment_working = segment_working

if __name__ == "__main__":
    from benchmarks.detection import bccd_rows, txl_rows

    for r in txl_rows(sys.argv[4].split(","), S.SegmentationParams()):
        if r["pixel_size"] == "estimated":
            print(r["part"], r["fields_set"], r["source"], r["tp"], r["fp"], r["fn"], r["recall"],
                  r["precision"], flush=True)
    if len(sys.argv) > 5:
        for r in bccd_rows(["train", "test"], S.SegmentationParams()):
            if r["class"] == "all":
                print("bccd", r["split"], r["tp"], r["fp"], r["fn"], flush=True)
