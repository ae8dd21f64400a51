"""WBC detection on BCCD: recall/precision (IoU >= 0.5 vs the VOC boxes) and nucleus Dice,
overall and per class of the field's white cell.

Usage::

    python -m benchmarks.detection [--splits train test]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from napari_ddrnet.segment import SegmentationParams, segment_wbc  # noqa: E402
from training.bccd import load_fields  # noqa: E402
from training.detection_eval import DetectionCounts  # noqa: E402

from .common import machine, print_table, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", nargs="+", default=["train", "test"])
    ap.add_argument("--param", nargs="*", default=[], metavar="NAME=VALUE",
                    help="override SegmentationParams, e.g. min_nucleus_area_um2=14")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    params = SegmentationParams(**{k: float(v) for k, v in (p.split("=") for p in args.param)})
    rows = []
    t0 = time.perf_counter()
    for split in args.splits:
        overall, per_class = DetectionCounts(), {}
        for field in load_fields(split):
            seg = segment_wbc(field.image(), params=params)
            boxes = seg.cells[["min_row", "min_col", "max_row", "max_col"]].to_numpy()
            gt_boxes, pred_n, gt_n = field.boxes(), seg.nuclei > 0, field.nucleus_mask()
            overall.add(boxes, gt_boxes, pred_n, gt_n)
            per_class.setdefault(field.wbc_class or "unknown", DetectionCounts()).add(
                boxes, gt_boxes, pred_n, gt_n)
        for name, c in [("all", overall), *sorted(per_class.items())]:
            d = c.as_dict()
            rows.append({"split": split, "class": name, "fields": d["fields"], "tp": d["tp"],
                         "fp": d["fp"], "fn": d["fn"], "recall": round(d["recall"], 4),
                         "precision": round(d["precision"], 4),
                         "nucleus_dice": round(d["nucleus_dice"], 4)})
    print_table(rows, list(rows[0]))
    print(f"\n{time.perf_counter() - t0:.1f} s")
    payload = {"machine": machine(), "rows": rows}
    if not args.param:  # only the default parameters update the committed results
        write_json(args.out / "detection.json", payload)
    return payload


if __name__ == "__main__":
    main()
