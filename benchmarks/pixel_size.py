"""Red-cell pixel-size estimate against annotated red-cell boxes, across sources and sizes.

Usage::

    git show 6771f76:src/napari_ddrnet/scale.py > /tmp/old_scale.py
    python -m benchmarks.pixel_size [--step 2] [--old /tmp/old_scale.py]

Reference per image: the median side of its annotated RBC boxes (those not cut by the image
border when there are at least 3) is taken as 7.5 µm. Reported per source: the ratio
estimate / reference (median, IQR, share within ±10 %) and the share of images where the
estimate declines (``None``). Sources: BCCD fields (VOC boxes), TXL-PBC per source (bccd, bcd,
pbc, raabin; ``boxes.csv``), LISC crops (no boxes: a rough reference of 0.15 µm/px from RBCs
spanning 45-55 px, which does not hold for every crop: a plausibility check, not accuracy).
Then the size stability: mosaics of BCCD fields (1x1 .. 6x6), and a synthetic smear at a known
pixel size from 640x480 to an 8000x8000 tiled whole-slide window, in memory and as a
dask array. ``--old`` first runs the same on an older implementation of
``red_cell_diameter_px`` (before/after); a declined estimate there counts as "cannot measure".
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from skimage import io

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from napari_ddrnet import scale  # noqa: E402
from napari_ddrnet.synthetic import synthetic_smear  # noqa: E402
from training.bccd import load_fields  # noqa: E402
from training.paths import data_root  # noqa: E402

from .common import machine, print_table, write_json  # noqa: E402

LISC_REFERENCE_UM = 0.15


def load_estimator(old: Path | None):
    """``image -> µm/px or None`` of this implementation or of an older ``scale.py``."""
    if old is None:
        return scale.estimate_pixel_size
    # Named inside the package, so the old file's relative imports (``from .sampling``) resolve.
    spec = importlib.util.spec_from_file_location("napari_ddrnet._old_scale", old)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)

    def estimate(image):
        d = mod.red_cell_diameter_px(np.asarray(image))
        return None if d is None or d < 4 else scale.RBC_DIAMETER_UM / d

    return estimate


def reference_um(boxes: np.ndarray, shape: tuple[int, int]) -> float | None:
    """7.5 µm over the median side of the RBC boxes (uncut ones when there are >= 3)."""
    if len(boxes) < 3:
        return None
    h, w = shape
    uncut = ((boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < h - 1)
             & (boxes[:, 3] < w - 1))
    if uncut.sum() >= 3:
        boxes = boxes[uncut]
    side = np.median(((boxes[:, 2] - boxes[:, 0]) + (boxes[:, 3] - boxes[:, 1])) / 2.0)
    return scale.RBC_DIAMETER_UM / float(side)


def txl_items(step: int):
    """``(source, path, reference µm)`` for TXL-PBC images, every ``step``-th per source."""
    root = data_root() / "txlpbc_train"
    boxes, meta = defaultdict(list), {}
    with open(root / "boxes.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            meta[r["image"]] = (r["source"], int(r["height"]), int(r["width"]))
            if r["label"] == "RBC":
                boxes[r["image"]].append([int(r[k]) for k in
                                          ("min_row", "min_col", "max_row", "max_col")])
    by_source = defaultdict(list)
    for name in sorted(meta):
        src, h, w = meta[name]
        by_source[src].append((name, reference_um(np.asarray(boxes[name]).reshape(-1, 4),
                                                  (h, w))))
    for src, items in sorted(by_source.items()):
        for name, ref in items[::step]:
            yield f"txl-{src}", root / "images" / name, ref


def bccd_items(step: int):
    for f in load_fields()[::step]:
        yield "bccd-voc", f.image_path, reference_um(f.boxes("RBC"), (480, 640))


def lisc_items(step: int):
    paths = sorted((data_root() / "lisc").glob("*/*.jpg"))
    for p in paths[::step * 4]:
        yield "lisc (rough ref)", p, LISC_REFERENCE_UM


def per_source(estimate, step: int) -> tuple[list[dict], dict]:
    ratios = defaultdict(list)
    seconds = []
    for source, path, ref in [*bccd_items(step), *txl_items(step), *lisc_items(step)]:
        if ref is None:
            continue
        image = io.imread(path)[..., :3]
        t = time.perf_counter()
        um = estimate(image)
        seconds.append(time.perf_counter() - t)
        ratios[source].append(np.nan if um is None else um / ref)
    rows = []
    for source, r in ratios.items():
        r = np.asarray(r)
        ok = r[np.isfinite(r)]
        q1, med, q3 = np.percentile(ok, [25, 50, 75]) if len(ok) else (np.nan,) * 3
        rows.append({"source": source, "images": len(r),
                     "cannot_measure": float(1 - len(ok) / len(r)),
                     "median": float(med), "q25": float(q1), "q75": float(q3),
                     "within_10pct": float(np.mean(np.abs(ok - 1) <= 0.1)) if len(ok) else 0.0,
                     "worst": float(ok[np.argmax(np.abs(np.log(ok)))]) if len(ok) else np.nan})
    return rows, {"median_ms_per_image": 1000 * float(np.median(seconds))}


def mosaic_stability(estimate, n_fields: int = 8) -> list[dict]:
    """Estimate on k x k tilings of a field divided by the estimate on the field itself."""
    rows = []
    for f in load_fields()[::max(1, 364 // n_fields)][:n_fields]:
        image = f.image()
        base = estimate(image)
        row = {"field": f.name, "field_um": base}
        for k in (2, 4, 6):
            um = estimate(np.tile(image, (k, k, 1)))
            row[f"{k}x{k}"] = None if um is None or base is None else um / base
        rows.append(row)
    return rows


def synthetic_sweep(estimate, truth: float = 0.1) -> list[dict]:
    """Estimate / truth on a synthetic smear from one field to a tiled whole-slide window."""
    import dask.array as da

    rows = []
    for shape in [(480, 640), (1536, 1536), (3000, 4000)]:
        image, _ = synthetic_smear(shape, truth, seed=1)
        rows.append({"size": f"{shape[1]}x{shape[0]}", "ratio": _ratio(estimate(image), truth)})
    tile, _ = synthetic_smear((2000, 2000), truth, seed=1)
    big = np.tile(tile, (4, 4, 1))
    rows.append({"size": "8000x8000 (tiled)", "ratio": _ratio(estimate(big), truth)})
    lazy = da.from_array(big, chunks=(1024, 1024, 3))
    rows.append({"size": "8000x8000 dask", "ratio": _ratio(estimate(lazy), truth)})
    # Other magnifications, each a field of at least ~100 µm (a real smear's cell count).
    for px, side in ((0.05, 2000), (0.2, 1000), (0.4, 800), (0.8, 800)):
        image, _ = synthetic_smear((side, side), px, seed=2)
        rows.append({"size": f"{side}x{side} at {px} µm/px", "ratio": _ratio(estimate(image), px)})
    return rows


def _ratio(um: float | None, truth: float) -> float | None:
    return None if um is None else round(um / truth, 3)


def run(estimate, label: str, step: int) -> dict:
    """All three measurements for one implementation, printed and returned."""
    rows, timing = per_source(estimate, step)
    print(f"[{label}] pixel-size estimate / reference per source "
          f"(median {timing['median_ms_per_image']:.0f} ms per image)")
    print_table([_fmt(r) for r in rows], list(rows[0]))
    mosaics = mosaic_stability(estimate)
    print(f"\n[{label}] mosaic of one BCCD field: estimate / single-field estimate")
    print_table([_fmt(r) for r in mosaics], list(mosaics[0]))
    sweep = synthetic_sweep(estimate)
    print(f"\n[{label}] synthetic smear: estimate / truth")
    print_table(sweep, ["size", "ratio"])
    print()
    return {"per_source": rows, "timing": timing, "mosaics": mosaics, "synthetic": sweep}


def _fmt(row: dict) -> dict:
    return {k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in row.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--step", type=int, default=1, help="use every step-th image per source")
    ap.add_argument("--old", type=Path, default=None,
                    help="an older scale.py, measured first for a before/after comparison")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    payload = {"machine": machine(), "step": args.step}
    if args.old is not None:
        payload["before"] = run(load_estimator(args.old), "before", args.step)
    payload["after"] = run(load_estimator(None), "after", args.step)
    write_json(args.out / "pixel_size.json", payload)
    return payload


if __name__ == "__main__":
    main()
