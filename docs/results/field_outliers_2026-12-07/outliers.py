"""Fifteenth session, a look only (nothing changed): would replacing a field's own red-cell
estimate by its source's median, when the two differ by more than a factor F, bring it nearer
the red-cell-box reference?

Run from the repository root::

    PYTHONPATH=. .venv/bin/python docs/results/field_outliers_2026-12-07/outliers.py \
        > docs/results/field_outliers_2026-12-07/outliers.log
"""

from __future__ import annotations

import collections

import numpy as np
from skimage import io

from benchmarks.pixel_size import bccd_items, txl_items
from napari_ddrnet.scale import resolve_pixel_size

FACTORS = (1.2, 1.25, 1.3, 1.5)


def main() -> None:
    rows = collections.defaultdict(list)
    for source, path, ref in [*bccd_items(1), *txl_items(1)]:
        px = resolve_pixel_size(io.imread(path)[..., :3])
        rows[source].append((px.um if px.source == "estimated" else np.nan,
                             ref if ref else np.nan))
    print("source      F     fields  outliers  share  median |log(px/ref)| own -> median  "
          "median nearer")
    for source, v in rows.items():
        v = np.asarray(v, float)
        est, ref = v[:, 0], v[:, 1]
        med = np.nanmedian(est)
        ok = np.isfinite(est)
        for f in FACTORS:
            out = ok & ((est / med > f) | (est / med < 1 / f))
            own = np.abs(np.log(est[out] / ref[out]))
            pooled = np.abs(np.log(med / ref[out]))
            good = np.isfinite(own) & np.isfinite(pooled)
            m_own = np.median(own[good]) if good.any() else np.nan
            m_pool = np.median(pooled[good]) if good.any() else np.nan
            print(f"{source:<11}{f:<6}{int(ok.sum()):>7}{int(out.sum()):>10}"
                  f"{out.sum() / ok.sum():>7.3f}{m_own:>17.3f} -> {m_pool:.3f}"
                  f"{int((pooled[good] < own[good]).sum()):>12} of {int(good.sum())}")


if __name__ == "__main__":
    main()
