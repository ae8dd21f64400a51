"""Fields whose own red-cell estimate is declined: the 0.1 µm/px default against their
folder's median estimate (what ``count`` uses since 2026-12-07, fifteenth session).

Each source stands for one lab's folder (one microscope and camera): TXL-PBC per source,
BCCD (all VOC fields) and Kaggle ``TEST`` (its class folders; BCCD fields at half size).
For every field its own pixel size is resolved as the plugin does; for those declined the
folder's pooled value (:func:`napari_ddrnet.scale.pool_by_folder`) is compared with the
default:

- scale: the ratio to the reference where there is one (7.5 µm over the median annotated
  red-cell box side, :func:`benchmarks.pixel_size.reference_um`);
- detection (TXL-PBC, BCCD): white cells found at IoU >= 0.5 against the expert boxes;
- classification (Kaggle ``TEST``): the shipped model's 4-class call on the detection with the
  largest nucleus (as the cross-source table cuts Kaggle), against the folder's class.

Only declined fields change, so only they are scored. No parameter is chosen here.

Usage::

    python -m benchmarks.field_pooled_pixel_size [--kaggle-step 1]

Writes ``benchmarks/results/field_pooled_pixel_size.{json,log}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from skimage import io

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_ddrnet.scale import pool_by_folder, resolve_pixel_size  # noqa: E402
from napari_ddrnet.segment import segment_wbc  # noqa: E402
from training.bccd import load_fields  # noqa: E402
from training.detection_eval import DetectionCounts, load_txl_fields  # noqa: E402
from training.paths import data_root, has_dataset  # noqa: E402

from .common import machine, write_json  # noqa: E402
from .pixel_size import reference_um  # noqa: E402

BOX = ["min_row", "min_col", "max_row", "max_col"]
KAGGLE_CLASSES = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")


def detection_sources():
    """``source -> [(path, rgb loader, WBC boxes, RBC boxes)]`` for TXL-PBC and BCCD."""
    out: dict[str, list] = {}
    if has_dataset("txlpbc_train"):
        for f in load_txl_fields():
            out.setdefault(f"txl-{f.source}", []).append(
                (str(f.root / "images" / f.image), f.rgb, f.wbc, f.rbc))
    if has_dataset("bccd"):
        for split in ("train", "test"):
            for f in load_fields(split):
                out.setdefault("bccd-voc", []).append(
                    (str(f.image_path), f.image, f.boxes(), f.boxes("RBC")))
    return out


def scale_ratio(um: float, rbc: np.ndarray, shape) -> float | None:
    ref = reference_um(np.asarray(rbc).reshape(-1, 4), shape)
    return None if ref is None else um / ref


def detection_rows() -> list[dict]:
    rows = []
    for source, fields in detection_sources().items():
        t = time.perf_counter()
        own = {path: resolve_pixel_size(load()) for path, load, _, _ in fields}
        pooled = pool_by_folder(own)
        before, after = DetectionCounts(), DetectionCounts()
        r_before, r_after = [], []
        for path, load, wbc, rbc in fields:
            if own[path].source != "default":
                continue  # only declined fields change
            rgb = load()
            for counts, px, ratios in ((before, own[path], r_before),
                                       (after, pooled.get(path, own[path]), r_after)):
                seg = segment_wbc(rgb, px.um, pixel_size_source=px.source)
                counts.add(seg.cells[BOX].to_numpy(), wbc, None, None)
                r = scale_ratio(px.um, rbc, rgb.shape[:2])
                if r is not None:
                    ratios.append(r)
        pool_um = next(iter(pooled.values())).um if pooled else None
        declined = sum(px.source == "default" for px in own.values())
        rows.append({"source": source, "fields": len(own), "declined": declined,
                     "pooled_um": pool_um,
                     "ratio_default": _median(r_before), "ratio_pooled": _median(r_after),
                     "wbc": before.tp + before.fn,
                     "found_default": before.tp, "fp_default": before.fp,
                     "found_pooled": after.tp, "fp_pooled": after.fp,
                     "seconds": round(time.perf_counter() - t, 1)})
    return rows


def kaggle_rows(step: int) -> list[dict]:
    from napari_ddrnet.classify import Classifier
    from napari_ddrnet.pipeline import analyze

    if not has_dataset("kaggle_blood_cells"):
        return []
    clf = Classifier(device="cpu")
    keep = [clf.classes.index(c) for c in KAGGLE_CLASSES]
    rows = []
    t = time.perf_counter()
    own, truth = {}, {}
    for folder in sorted((data_root() / "kaggle_blood_cells" / "TEST").iterdir()):
        for p in sorted(folder.glob("*.jpeg"))[::step]:
            own[str(p)] = resolve_pixel_size(io.imread(p)[..., :3])
            truth[str(p)] = folder.name.lower()
    pooled = pool_by_folder(own)
    declined = [p for p in own if own[p].source == "default"]
    right = {"default": 0, "pooled": 0}
    for path in declined:
        rgb = io.imread(path)[..., :3]
        for mode, px in (("default", own[path]), ("pooled", pooled.get(path, own[path]))):
            res = analyze(rgb, None, clf, pixel_size=px, return_labels=False)
            if not len(res.cells):
                continue
            best = int(np.argmax(res.cells["nucleus_area_px"].to_numpy()))
            probs = res.cells[[f"prob_{c}" for c in clf.classes]].to_numpy()[best]
            call = KAGGLE_CLASSES[int(np.argmax(probs[keep]))]
            right[mode] += call == truth[path]
    folders = sorted({Path(p).parent.name for p in pooled})
    rows.append({"source": "kaggle-test", "fields": len(own), "declined": len(declined),
                 "pooled_um": {f: round(px.um, 4) for f in folders for p, px in pooled.items()
                               if Path(p).parent.name == f},
                 "right_default": right["default"], "right_pooled": right["pooled"],
                 "seconds": round(time.perf_counter() - t, 1)})
    return rows


def _median(values) -> float | None:
    return float(np.median(values)) if values else None


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kaggle-step", type=int, default=1, help="every n-th Kaggle TEST field")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    det = detection_rows()
    kag = kaggle_rows(args.kaggle_step)
    lines = ["fields whose own red-cell estimate is declined: default 0.1 µm/px vs the folder's "
             "median estimate",
             f"{'source':<12}{'fields':>7}{'declined':>9}{'pooled µm':>10}"
             f"{'ratio dflt':>11}{'ratio pool':>11}{'WBC':>5}{'found dflt/pool':>16}"
             f"{'FP dflt/pool':>13}"]
    for r in det:
        lines.append(f"{r['source']:<12}{r['fields']:>7}{r['declined']:>9}"
                     f"{_fmt(r['pooled_um']):>10}{_fmt(r['ratio_default']):>11}"
                     f"{_fmt(r['ratio_pooled']):>11}{r['wbc']:>5}"
                     f"{r['found_default']:>8}/{r['found_pooled']:<7}"
                     f"{r['fp_default']:>6}/{r['fp_pooled']:<6}")
    for r in kag:
        lines.append(f"{r['source']:<12}{r['fields']:>7}{r['declined']:>9}  pooled µm "
                     f"{r['pooled_um']}; 4-class calls right: default {r['right_default']}, "
                     f"pooled {r['right_pooled']} of {r['declined']}")
    print("\n".join(lines))
    payload = {"machine": machine(), "kaggle_step": args.kaggle_step, "detection": det,
               "kaggle": kag}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "field_pooled_pixel_size.json", payload)
    (args.out / "field_pooled_pixel_size.log").write_text("\n".join(lines) + "\n")
    return payload


if __name__ == "__main__":
    main()
