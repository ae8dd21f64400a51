"""How far stained nuclei stay from the segmentation's not-specimen limit, per TXL-PBC source.

Usage::

    python -m benchmarks.not_specimen [--step 25]

For every ``step``-th TXL-PBC field of each source: segment it, take the brightest channel of
each detected nucleus pixel relative to the field's background (mean of the 95th-percentile
white point, as ``segment.not_specimen`` does) and report the 0.1th and 1st percentiles per
field. ``specimen.NOT_SPECIMEN_FRACTION`` must stay well below the smallest of them.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from skimage import io

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from napari_ddrnet.segment import segment_wbc  # noqa: E402
from napari_ddrnet.specimen import NOT_SPECIMEN_FRACTION  # noqa: E402

from .common import print_table, write_json  # noqa: E402
from .pixel_size import txl_items  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--step", type=int, default=25)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/not_specimen.json"))
    args = ap.parse_args(argv)
    per_src: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for src, path, _ref in txl_items(args.step):
        image = io.imread(path)[..., :3]
        nuc = segment_wbc(image).nuclei > 0
        if not nuc.any():
            continue
        white = float(np.mean(np.percentile(image.reshape(-1, 3), 95, axis=0)))
        rel = image[nuc].max(axis=1) / white
        per_src[src][0].append(np.percentile(rel, 0.1))
        per_src[src][1].append(np.percentile(rel, 1))
    rows = []
    for src, (p01, p1) in sorted(per_src.items()):
        rows.append({"source": src, "fields": len(p01), "min_p0.1": round(min(p01), 3),
                     "median_p0.1": round(float(np.median(p01)), 3),
                     "min_p1": round(min(p1), 3)})
    print("brightest channel of nucleus pixels / background, per field "
          f"(not-specimen limit {NOT_SPECIMEN_FRACTION})")
    print_table(rows, list(rows[0]))
    write_json(args.json, {"limit": NOT_SPECIMEN_FRACTION, "per_source": rows})


if __name__ == "__main__":
    main()
