"""WBC detection: recall/precision at IoU >= 0.5 on BCCD and on TXL-PBC per source.

BCCD (VOC boxes, nucleus masks): overall and per class of the field's white cell, with nucleus
Dice, pixel size estimated. TXL-PBC (four sources: BCCD, BCD, PBC single-cell images,
Raabin-WBC): per source, on the development part the parameters were tuned on and on the
held-out part (:func:`training.detection_eval.txl_part`), once with the pixel size estimated
from the red cells and once derived from the annotated red-cell boxes (median side = 7.5 µm).

Usage::

    python -m benchmarks.detection [--splits train test] [--txl-parts dev held]
                                   [--per-source N] [--param NAME=VALUE ...]

Writes ``benchmarks/results/detection.json`` and ``detection.log`` (only with the default
parameters and all fields).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from napari_ddrnet.segment import SegmentationParams, segment_wbc  # noqa: E402
from training.bccd import load_fields  # noqa: E402
from training.detection_eval import (  # noqa: E402
    REVIEWED_BOXES_HELD,
    TXL_SOURCES,
    DetectionCounts,
    load_txl_fields,
    reviewed_fields,
)
from training.paths import has_dataset  # noqa: E402

from .common import machine, write_json  # noqa: E402

BOX = ["min_row", "min_col", "max_row", "max_col"]


def bccd_rows(splits: list[str], params: SegmentationParams) -> list[dict]:
    """BCCD fields, pixel size estimated: overall and per class of the field's white cell."""
    rows = []
    for split in splits:
        overall, per_class = DetectionCounts(), {}
        for field in load_fields(split):
            seg = segment_wbc(field.image(), params=params)
            boxes = seg.cells[BOX].to_numpy()
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
    return rows


def txl_rows(parts: list[str], params: SegmentationParams,
             per_source: int | None = None) -> list[dict]:
    """TXL-PBC per part, pixel-size mode and source (no nucleus masks: no Dice).

    Each is counted on all fields and, as ``fields_set = "no_bad_box"``, without the fields
    of :data:`training.detection_eval.REVIEWED_BOXES` and ``REVIEWED_BOXES_HELD`` (reviewed
    annotation errors of the dev part, and of the held-out part reviewed after the method was
    frozen).
    """
    reviewed = reviewed_fields() | reviewed_fields(REVIEWED_BOXES_HELD)
    rows = []
    for part in parts:
        fields = load_txl_fields(part, per_source=per_source)
        for mode in ("estimated", "rbc_boxes"):
            counts = {(s, k): DetectionCounts() for k in ("all", "no_bad_box")
                      for s in TXL_SOURCES}
            seconds = dict.fromkeys(TXL_SOURCES, 0.0)
            for f in fields:
                rgb = f.rgb()
                px = f.rbc_pixel_size() if mode == "rbc_boxes" else None
                t = time.perf_counter()
                seg = segment_wbc(rgb, px, params=params)
                seconds[f.source] += time.perf_counter() - t
                boxes = seg.cells[BOX].to_numpy()
                counts[f.source, "all"].add(boxes, f.wbc, None, None)
                if f.image not in reviewed:
                    counts[f.source, "no_bad_box"].add(boxes, f.wbc, None, None)
            for (s, k), c in counts.items():
                if not c.n_fields:
                    continue
                n = counts[s, "all"].n_fields
                rows.append({"part": part, "pixel_size": mode, "fields_set": k, "source": s,
                             "fields": c.n_fields, "tp": c.tp, "fp": c.fp, "fn": c.fn,
                             "recall": round(c.recall, 4), "precision": round(c.precision, 4),
                             "ms_per_field": round(1000 * seconds[s] / n, 1)})
    return rows


def pooled_rows(rows: list[dict]) -> list[dict]:
    """The parts of :func:`txl_rows` summed per pixel-size mode, field set and source.

    The issue states its target on the whole TXL-PBC train set; the development part was tuned
    on, so the pooled figure flatters and the held-out rows stay the honest ones.
    """
    pooled: dict[tuple, dict] = {}
    parts = "+".join(sorted({r["part"] for r in rows}))
    for r in rows:
        key = (r["pixel_size"], r["fields_set"], r["source"])
        acc = pooled.setdefault(key, {"part": parts,
                                      "pixel_size": key[0], "fields_set": key[1],
                                      "source": key[2], "fields": 0, "tp": 0, "fp": 0, "fn": 0})
        for k in ("fields", "tp", "fp", "fn"):
            acc[k] += r[k]
    for acc in pooled.values():
        acc["recall"] = round(acc["tp"] / max(1, acc["tp"] + acc["fn"]), 4)
        acc["precision"] = round(acc["tp"] / max(1, acc["tp"] + acc["fp"]), 4)
    return list(pooled.values())


def table(rows: list[dict]) -> list[str]:
    """Rows as aligned text lines."""
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    lines = [" | ".join(c.ljust(w) for c, w in zip(cols, widths)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths))
              for r in rows]
    return lines


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", nargs="*", default=["train", "test"],
                    help="BCCD splits (none: skip BCCD)")
    ap.add_argument("--txl-parts", nargs="*", default=["dev", "held"],
                    help="TXL-PBC parts (none: skip TXL-PBC)")
    ap.add_argument("--per-source", type=int, default=None,
                    help="only the first N TXL-PBC fields of each source (quick look)")
    ap.add_argument("--param", nargs="*", default=[], metavar="NAME=VALUE",
                    help="override SegmentationParams, e.g. min_nucleus_area_um2=14")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    params = SegmentationParams(**{k: float(v) for k, v in (p.split("=") for p in args.param)})
    command = "python -m benchmarks.detection " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    lines = [f"$ {command}", f"machine: {machine()}", ""]
    payload = {"command": command, "machine": machine()}
    t0 = time.perf_counter()
    if args.splits and has_dataset("bccd"):
        payload["bccd"] = rows = bccd_rows(args.splits, params)
        lines += ["BCCD fields (VOC boxes, nucleus masks), pixel size estimated", *table(rows),
                  ""]
    if args.txl_parts and has_dataset("txlpbc_train"):
        payload["txlpbc"] = rows = txl_rows(args.txl_parts, params, args.per_source)
        lines += ["TXL-PBC per source (IoU >= 0.5); pixel size estimated from the red cells or "
                  "from the annotated RBC boxes (median side = 7.5 µm); fields_set no_bad_box "
                  "leaves out the fields listed in training/txl_reviewed_boxes*.csv",
                  *table(rows), ""]
        if len(set(r["part"] for r in rows)) > 1:
            payload["txlpbc_pooled"] = pooled = pooled_rows(rows)
            lines += ["TXL-PBC train as a whole (parts pooled; the dev part was tuned on, so "
                      "the held-out rows above are the honest figure)", *table(pooled), ""]
    lines.append(f"{time.perf_counter() - t0:.1f} s")
    print("\n".join(lines))
    if not args.param and args.per_source is None:  # only full default runs are committed
        write_json(args.out / "detection.json", payload)
        (args.out / "detection.log").write_text("\n".join(lines) + "\n")
    return payload


if __name__ == "__main__":
    main()
