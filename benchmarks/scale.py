"""Scaling of the tiled path: mosaics of 1, 4, 16 and 64 fields as tiled TIFFs.

Usage::

    python -m benchmarks.scale [--sizes 1 4 16 64] [--threads 2] [--weights W]

``--weights`` (a packaged model's name or a file; default the shipped model) writes
``scale_<name>.json`` instead of ``scale.json``.

Each mosaic is built at run time from synthetic fields (never committed), written as a tiled
TIFF, opened lazily (tifffile -> zarr -> dask) and analysed with the tiled path in a fresh
process, which reports its wall time and peak RSS. Time should grow linearly with the number of
fields and memory stay flat.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .common import machine, print_table, write_json

CHILD = r"""
import json, sys, time
import torch
from benchmarks.common import peak_rss_mb  # the child's own peak (run from the repo root)
torch.set_num_threads(int(sys.argv[2]))
from napari_ddrnet.classify import Classifier
from napari_ddrnet.image_io import read_image
from napari_ddrnet.pipeline import analyze
clf = Classifier(sys.argv[3] or None, device="cpu")
t = time.perf_counter()
levels, px = read_image(sys.argv[1])
res = analyze(levels[0], 0.1, clf, return_labels=False, tile_size=1024)
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "cells": len(res.cells),
                  "peak_rss_mb": peak_rss_mb()}))
"""


def build_mosaic(n_fields: int, path: Path) -> int:
    import tifffile

    from napari_ddrnet.synthetic import synthetic_smear

    side = int(math.isqrt(n_fields))
    rows, cols = side, n_fields // side
    fh, fw = 480, 640
    mosaic = np.empty((rows * fh, cols * fw, 3), np.uint8)
    n_wbc = 0
    for i in range(rows):
        for j in range(cols):
            img, truth = synthetic_smear((fh, fw), 0.1, seed=1000 + i * cols + j)
            mosaic[i * fh:(i + 1) * fh, j * fw:(j + 1) * fw] = img
            n_wbc += len(truth)
    tifffile.imwrite(path, mosaic, tile=(512, 512), photometric="rgb", compression="zlib")
    return n_wbc


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--weights", default=None,
                    help="a packaged model's name or a weights file (default: the shipped one)")
    args = ap.parse_args(argv)
    if args.weights and Path(args.weights).is_file():  # the child runs in the repo root
        args.weights = str(Path(args.weights).resolve())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = Path(tmp) / f"mosaic_{n}.tif"
            n_wbc = build_mosaic(n, path)
            out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(args.threads),
                                  args.weights or ""],
                                 capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).resolve().parents[1])
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"fields": n, "megapixels": round(n * 0.3072, 1),
                         "wbc_true": n_wbc, "wbc_found": r["cells"],
                         "seconds": round(r["seconds"], 2),
                         "s_per_field": round(r["seconds"] / n, 3),
                         "peak_rss_mb": round(r["peak_rss_mb"], 0)})
            print(f"{n} fields done", flush=True)
    print_table(rows, list(rows[0]))
    by = {r["fields"]: r for r in rows}
    if 4 in by and 64 in by:
        ratio = by[64]["peak_rss_mb"] / by[4]["peak_rss_mb"]
        print(f"\npeak RSS 64 fields / 4 fields: {ratio:.2f} (target <= 1.5)")
        print(f"time per field 64 / 4: {by[64]['s_per_field'] / by[4]['s_per_field']:.2f}")
    from napari_ddrnet.weights import DEFAULT_WEIGHTS

    payload = {"machine": machine(), "weights": args.weights or DEFAULT_WEIGHTS.stem,
               "rows": rows}
    name = f"scale_{Path(args.weights).stem}" if args.weights else "scale"
    write_json(args.out / f"{name}.json", payload)
    return payload


if __name__ == "__main__":
    main()
