"""A ~1 GPix pyramidal OME-TIFF opened and analysed in the napari viewer: peak RSS and time.

Usage (needs a display: run under ``xvfb-run -a``)::

    xvfb-run -a python -m benchmarks.slide_viewer [--side 32768] [--region 8192] [--whole]

The slide is built at run time (never committed) tile by tile from a pool of synthetic smear
fields, level by level (full resolution, then every 2nd, 4th, ... pixel), so building it needs a
few MB. Each measured run is a fresh process that opens napari, reads the slide through the
plugin's reader (a lazy multiscale image), docks the widget, and analyses a square Shapes
region at the slide's centre (``--region`` pixels a side) or, with ``--whole``, the whole
slide. Printed and written to ``benchmarks/results/slide_viewer.{json,log}``: peak RSS (the
child's own ``VmHWM``, and the largest of psutil samples every 0.25 s), times, cells found vs
placed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import machine, print_table, write_json

TILE = 1024
PX_UM = 0.1
POOL = 16
KINDS = ("neutrophil", "lymphocyte", "monocyte", "eosinophil")


def _pool(n: int = POOL) -> tuple[list[np.ndarray], list[int]]:
    """``n`` distinct synthetic fields of TILE x TILE pixels, and their white-cell counts."""
    from napari_ddrnet.synthetic import synthetic_smear

    tiles, wbc = [], []
    for i in range(n):
        kinds = tuple(KINDS[(i + k) % 4] for k in range(1 + i % 3))
        img, truth = synthetic_smear((TILE, TILE), PX_UM, wbc_kinds=kinds, seed=500 + i)
        tiles.append(img)
        wbc.append(len(truth))
    return tiles, wbc


def _which(i: int, j: int) -> int:
    """The pool field at slide tile ``(i, j)`` (a fixed, irregular pattern)."""
    return (i * 7 + j * 3 + (i * j) % 5) % POOL


def build_slide(path: Path, side: int) -> dict:
    """Write a ``side x side`` RGB pyramidal OME-TIFF (JPEG tiles, pixel size 0.1 µm)."""
    import tifffile

    pool, wbc = _pool()
    n = side // TILE
    n_levels = 1
    while side // 2**n_levels >= TILE:
        n_levels += 1

    def tiles(k: int):
        f = 2**k
        small = [t[::f, ::f] for t in pool]  # nearest neighbour, as napari's lower levels
        per = f  # pool fields across one output tile
        for ti in range(n // f):
            for tj in range(n // f):
                rows = [np.concatenate([small[_which(ti * per + a, tj * per + b)]
                                        for b in range(per)], axis=1) for a in range(per)]
                yield np.concatenate(rows, axis=0)

    t = time.perf_counter()
    opts = {"tile": (TILE, TILE), "photometric": "rgb", "compression": "jpeg",
            "compressionargs": {"level": 92}, "dtype": np.uint8}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(tiles(0), shape=(side, side, 3), subifds=n_levels - 1,
                 metadata={"axes": "YXS", "PhysicalSizeX": PX_UM, "PhysicalSizeXUnit": "µm",
                           "PhysicalSizeY": PX_UM, "PhysicalSizeYUnit": "µm"}, **opts)
        for k in range(1, n_levels):
            tw.write(tiles(k), shape=(side // 2**k, side // 2**k, 3), subfiletype=1, **opts)
    placed = sum(wbc[_which(i, j)] for i in range(n) for j in range(n))
    return {"side": side, "levels": n_levels, "megapixels": round(side * side / 1e6, 1),
            "file_mb": round(path.stat().st_size / 2**20, 1), "wbc_placed": placed,
            "build_s": round(time.perf_counter() - t, 1)}


def wbc_placed_in(box: tuple[int, int, int, int]) -> int:
    """White cells placed in pool tiles lying wholly inside ``box`` (row0, col0, row1, col1),
    plus those of partly covered tiles whose cell centroid is inside."""
    from napari_ddrnet.synthetic import synthetic_smear

    r0, c0, r1, c1 = box
    count = 0
    cache: dict[int, np.ndarray] = {}
    for i in range(r0 // TILE, -(-r1 // TILE)):
        for j in range(c0 // TILE, -(-c1 // TILE)):
            p = _which(i, j)
            if p not in cache:
                kinds = tuple(KINDS[(p + k) % 4] for k in range(1 + p % 3))
                _, truth = synthetic_smear((TILE, TILE), PX_UM, wbc_kinds=kinds, seed=500 + p)
                cache[p] = truth[["centroid_row", "centroid_col"]].to_numpy()
            rc = cache[p] + (i * TILE, j * TILE)
            count += int(((rc[:, 0] >= r0) & (rc[:, 0] < r1)
                          & (rc[:, 1] >= c0) & (rc[:, 1] < c1)).sum())
    return count


CHILD = r"""
import json, sys, threading, time
import numpy as np
from benchmarks.common import peak_rss_mb  # the child's own peak (run from the repo root)
import psutil
import torch
torch.set_num_threads(int(sys.argv[3]))
t_start = time.perf_counter()
import napari
from qtpy.QtWidgets import QApplication
from napari_ddrnet._widget import DifferentialWidget, SHAPES
from napari_ddrnet.layers import LABELS_NAME

proc, samples, stop = psutil.Process(), [], threading.Event()
def sample():
    while not stop.is_set():
        samples.append(proc.memory_info().rss)
        time.sleep(0.25)
threading.Thread(target=sample, daemon=True).start()
def pump(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.02)
mb = lambda b: round(b / 2**20, 1)
peak = lambda: round(peak_rss_mb(), 1)
out = {}
viewer = napari.Viewer(show=True)
app = QApplication.instance()
t = time.perf_counter()
layer = viewer.open(sys.argv[1], plugin="napari-ddrnet")[0]
pump(3.0)
out["open_s"] = round(time.perf_counter() - t, 2)
out["multiscale"] = bool(layer.multiscale)
out["levels"] = len(layer.data) if layer.multiscale else 1
out["level0_type"] = type(layer.data[0]).__module__.split(".")[0]
out["pixel_size_um"] = layer.metadata.get("pixel_size_um")
out["rss_after_open_mb"] = mb(proc.memory_info().rss)
widget = DifferentialWidget(viewer)
viewer.window.add_dock_widget(widget)
widget._image.reset_choices()
widget._image.value = layer
widget._device.value = "cpu"
region = int(sys.argv[2])
h, w = layer.data[0].shape[:2]
if region > 0:
    r0, c0 = (h - region) // 2, (w - region) // 2
    px = float(layer.scale[-1])
    square = np.array([[r0, c0], [r0, c0 + region], [r0 + region, c0 + region],
                       [r0 + region, c0]], float) - 0.5
    shapes = viewer.add_shapes([square * px], shape_type="polygon", name="counting area",
                               edge_color="yellow", face_color="transparent")
    widget.reset_choices()
    widget._analyse.value = SHAPES
    widget._region_layer.value = shapes
    out["box"] = [r0, c0, r0 + region, c0 + region]
else:
    out["box"] = [0, 0, h, w]
t = time.perf_counter()
worker = widget.run()
assert worker is not None, widget._status.value
ticks = []
worker.yielded.connect(lambda _: ticks.append(time.perf_counter()))
while widget._worker is not None:
    pump(0.2)
out["analyse_s"] = round(time.perf_counter() - t, 1)
out["progress_ticks"] = len(ticks)
res = widget.result
assert res is not None, widget._status.value
out["cells"] = len(res.cells)
out["status"] = widget._status.value
out["rss_peak_during_run_mb"] = peak()
try:  # napari's opportunistic dask cache (chunks it read for display, and any others)
    from napari.utils._dask_utils import _DASK_CACHE
    out["napari_dask_cache_mb"] = mb(_DASK_CACHE.cache.total_bytes)
except Exception:
    pass
masks = viewer.layers[LABELS_NAME]
out["masks_multiscale"] = bool(masks.multiscale)
out["masks_type"] = type(masks.data[0]).__module__.split(".")[0]
# Draw the masks: the whole slide (coarse levels), then zoomed on the region (full res).
viewer.reset_view()
pump(3.0)
viewer.camera.center = ((out["box"][0] + out["box"][2]) / 2 * float(layer.scale[-2]),
                        (out["box"][1] + out["box"][3]) / 2 * float(layer.scale[-1]))
viewer.camera.zoom = 1.0 / float(layer.scale[-1])
pump(3.0)
out["masks_levels"] = len(masks.data) if masks.multiscale else 1
out["masks_level_drawn"] = int(masks.data_level)
stop.set()
out["rss_peak_mb"] = peak()
out["rss_peak_sampled_mb"] = mb(max(samples))
out["total_s"] = round(time.perf_counter() - t_start, 1)
print(json.dumps(out))
viewer.close()
"""


def run_child(path: Path, region: int, threads: int, timeout: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(region), str(threads)],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=32768, help="slide side, pixels")
    ap.add_argument("--region", type=int, nargs="+", default=[8192],
                    help="side(s) of the centred square region(s) to analyse, pixels")
    ap.add_argument("--whole", action="store_true", help="also analyse the whole slide")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=3600, help="per run, seconds")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slide.ome.tif"
        slide = build_slide(path, args.side)
        print(f"built {slide}", flush=True)
        for region in [*args.region, *([0] if args.whole else [])]:
            r = run_child(path, region, args.threads, args.timeout)
            r["wbc_placed_in_box"] = wbc_placed_in(tuple(r["box"]))
            r1, c1 = r["box"][2] - r["box"][0], r["box"][3] - r["box"][1]
            r["analysed"] = "whole slide" if region == 0 else f"region {r1}x{c1}"
            r["analysed_mp"] = round(r1 * c1 / 1e6, 1)
            r["s_per_mp"] = round(r["analyse_s"] / (r1 * c1 / 1e6), 3)
            print(json.dumps(r), flush=True)
            rows.append(r)
            # Written after every run, so a long whole-slide run cut short keeps the others.
            write_json(args.out / "slide_viewer.json", {"machine": machine(), "slide": slide,
                                                        "runs": rows, "target_rss_mb": 2048.0})
    cols = ["analysed", "analysed_mp", "cells", "wbc_placed_in_box", "analyse_s", "s_per_mp",
            "rss_after_open_mb", "rss_peak_mb", "rss_peak_sampled_mb", "masks_level_drawn"]
    print_table(rows, cols)
    target = 2048.0
    for r in rows:
        verdict = "within" if r["rss_peak_mb"] <= target else "ABOVE"
        print(f"{r['analysed']}: peak RSS {r['rss_peak_mb']} MB, {verdict} the 2 GB target")
    payload = {"machine": machine(), "slide": slide, "runs": rows, "target_rss_mb": target}
    write_json(args.out / "slide_viewer.json", payload)
    return payload


if __name__ == "__main__":
    main()
