"""Red-cell pixel-size estimate vs the BCCD red-cell boxes.

Usage::

    python -m benchmarks.pixel_size [--step 5]

For every ``step``-th BCCD field with at least 5 annotated red cells, the estimated red-cell
diameter (pixels) is divided by the median annotated RBC box side; 1.0 means the estimate
matches the annotation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from napari_ddrnet.scale import red_cell_diameter_px  # noqa: E402
from training.bccd import load_fields  # noqa: E402

from .common import machine, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--step", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    ratios = []
    for field in load_fields()[::args.step]:
        boxes = field.boxes("RBC")
        if len(boxes) < 5:
            continue
        side = np.median(((boxes[:, 2] - boxes[:, 0]) + (boxes[:, 3] - boxes[:, 1])) / 2)
        d = red_cell_diameter_px(field.image())
        ratios.append(np.nan if d is None else d / side)
    r = np.asarray(ratios, float)
    ok = r[np.isfinite(r)]
    summary = {"fields": len(r), "estimated": int(len(ok)), "mean": float(ok.mean()),
               "std": float(ok.std()), "p5": float(np.percentile(ok, 5)),
               "median": float(np.median(ok)), "p95": float(np.percentile(ok, 95)),
               "within_20pct": float(np.mean(np.abs(ok - 1) <= 0.2))}
    print("estimated RBC diameter / annotated RBC box side on BCCD fields")
    for k, v in summary.items():
        print(f"  {k}: {v:.3f}" if isinstance(v, float) else f"  {k}: {v}")
    write_json(args.out / "pixel_size.json", {"machine": machine(), **summary})
    return summary


if __name__ == "__main__":
    main()
