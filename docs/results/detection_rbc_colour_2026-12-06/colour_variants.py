"""Red-cell colour variants of ``napari_ddrnet.segment`` on TXL-PBC (and BCCD ``train``).

Usage (project root)::

    PYTHONPATH=src:. python docs/results/detection_rbc_colour_2026-12-06/colour_variants.py \
        VARIANT PARTS [bccd]

VARIANT: ``base`` (the shipped code), ``t50`` (the median of the half of the middle density
class closest in hue to its first median), ``A`` (every stained pixel below the dark class,
trimmed as ``t50``), ``B`` (the same, untrimmed). PARTS: ``dev``, ``held`` or ``dev,held``.
Prints tp/fp/fn per source with the estimated pixel size; with ``bccd``, BCCD ``train`` too.
"""

import sys

import numpy as np
from skimage import filters

import napari_ddrnet.segment as S

VAR = sys.argv[1]
shipped_colour = S.red_cell_colour


def trimmed_colour(sod, n, params=None, keep=0.5):
    """The shipped median, then the median of the ``keep`` share closest to it in hue."""
    params = params or S.SegmentationParams()
    v = shipped_colour(sod, n, params)
    if len(sod) < max(50, params.min_stained_fraction * n):
        return v
    cos = (sod @ v) / np.maximum(np.linalg.norm(sod, axis=1), 1e-6)
    w = np.median(sod[cos >= np.quantile(cos, 1 - keep)], axis=0)
    return (w / np.linalg.norm(w)).astype(np.float32)


def stats_pale(rgb, params):
    """``segment._statistics`` with the red-cell colour from every stained pixel below the
    dark class (variants A and B); the rest as shipped."""
    b = S.BORDER_PX
    if min(rgb.shape[:2]) > 4 * b:
        rgb = rgb[b:-b, b:-b]
    white = np.percentile(rgb.reshape(-1, 3), 95, axis=0)
    od = S.optical_density(rgb, white)
    total = od.sum(axis=-1)
    outside = S.not_specimen(rgb, white)
    if outside is not None:
        total[outside] = 0.0
    try:
        low, high = filters.threshold_multiotsu(total, classes=3)
    except ValueError:
        low, high = np.inf, np.inf
    low = max(float(low), params.stained_od)
    stained = total > low
    pale = (total > params.stained_od) & (total <= high)
    colour = trimmed_colour if VAR == "A" else shipped_colour
    rbc = colour(od[pale], total.size, params)
    e = rbc.astype(np.float32)
    od -= (od @ e)[..., None] * e
    signal = np.sqrt(np.einsum("...c,...c->...", od, od))
    values = signal[stained]
    if values.size:
        values = np.minimum(values, np.percentile(values, 99.5))
    if values.size and np.ptp(values) > 0:
        thr = max(params.otsu_factor * float(filters.threshold_otsu(values)), params.min_signal)
    else:
        thr = float("inf")
    return S.FieldStats(tuple(float(v) for v in white), thr, tuple(float(v) for v in rbc))


if VAR == "t50":
    S.red_cell_colour = trimmed_colour
elif VAR in ("A", "B"):
    S._statistics = stats_pale

from benchmarks.detection import bccd_rows, txl_rows  # noqa: E402

for r in txl_rows(sys.argv[2].split(","), S.SegmentationParams()):
    if r["pixel_size"] == "estimated":
        print(r["part"], r["fields_set"], r["source"], r["tp"], r["fp"], r["fn"], r["recall"],
              r["precision"])
if len(sys.argv) > 3:
    for r in bccd_rows(["train"], S.SegmentationParams()):
        if r["class"] == "all":
            print("bccd", r)
