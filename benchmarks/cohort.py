"""Cohorts on dask.distributed: a synthetic pyramidal OME-TIFF slide end to end.

Usage::

    python -m benchmarks.cohort [--side 32768] [--medium 8192] [--sweep 4096]
        [--tile-sizes 512 1024 2048 4096] [--tile 2048] [--big-workers 2] [--out DIR]

Stages (each appends to ``cohort.json`` as it finishes, so a stopped run keeps its figures):

1. scheduler overhead of empty tasks on 2 workers (per task, ms);
2. tile-size sweep on a ``--sweep`` square slide, 2 workers: wall time, the share of worker
   time not spent in tasks (scheduler overhead), and the pixels read per pixel (tile halo);
3. ``--medium`` slide with 1 then 2 workers: speed-up and identical CSVs;
4. ``--side`` slide (32768 = 1.07 gigapixel) with ``--big-workers`` workers: time, peak RSS per
   worker, WBC found vs placed.

Slides are written tile by tile (a band of synthetic fields at a time, never the whole image
in memory) as tiled, pyramidal OME-TIFFs (level 0 plus 1/4 and 1/16 levels in SubIFDs) at
0.1 µm/px, with every field's white cells known. Workers run one thread each (torch too).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .common import machine, print_table, write_json

FIELD = 1024  # synthetic field side; a pool of distinct fields is repeated over the slide
POOL = 24
PX_UM = 0.1


def write_slide(path: Path, side: int, seed: int = 0) -> pd.DataFrame:
    """Write a ``side`` x ``side`` pyramidal OME-TIFF; return its white cells (slide pixels)."""
    import tifffile

    from napari_ddrnet.synthetic import synthetic_smear

    n = side // FIELD
    pool = [synthetic_smear((FIELD, FIELD), PX_UM, seed=seed + k) for k in range(POOL)]
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, POOL, (n, n))
    truth = []
    for i in range(n):
        for j in range(n):
            t = pool[pick[i, j]][1].copy()
            t["centroid_row"] += i * FIELD
            t["centroid_col"] += j * FIELD
            truth.append(t)
    l1 = np.empty((side // 4, side // 4, 3), np.uint8)
    tile = 512

    def tiles():
        for i in range(n):
            band = np.concatenate([pool[k][0] for k in pick[i]], axis=1)
            l1[i * FIELD // 4:(i + 1) * FIELD // 4] = band[::4, ::4]
            for r in range(0, FIELD, tile):
                for c in range(0, side, tile):
                    yield band[r:r + tile, c:c + tile]

    meta = {"axes": "YXS", "PhysicalSizeX": PX_UM, "PhysicalSizeY": PX_UM,
            "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile),
                 photometric="rgb", subifds=2, metadata=meta)
        tw.write(l1, tile=(tile, tile), photometric="rgb", subfiletype=1)
        tw.write(l1[::4, ::4], tile=(tile, tile), photometric="rgb", subfiletype=1)
    return pd.concat(truth, ignore_index=True)


def _rss_mb() -> float:
    """The worker's own peak RSS (not its parent's: see :func:`benchmarks.common.peak_rss_mb`)."""
    from benchmarks.common import peak_rss_mb

    return peak_rss_mb()


def _cpu_s() -> float:
    """CPU seconds this process has used (user + system): work done, whatever the load."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _matched(cells: pd.DataFrame, truth: pd.DataFrame, radius_px: float = 40.0) -> int:
    """Placed white cells with a found cell's centroid within ``radius_px``."""
    from scipy.spatial import cKDTree

    if not len(cells):
        return 0
    tree = cKDTree(cells[["centroid_row", "centroid_col"]].to_numpy())
    d, _ = tree.query(truth[["centroid_row", "centroid_col"]].to_numpy())
    return int((d <= radius_px).sum())


def run_slide(path: Path, truth: pd.DataFrame, workers: int, tile: int, out: Path) -> dict:
    """One cohort run of ``path`` on a fresh local cluster; figures of that run."""
    import logging

    from distributed import Client, get_task_stream

    from napari_ddrnet.cohort import CountSettings, count_cohort, local_cluster

    t0 = time.perf_counter()
    with local_cluster(workers, dashboard_address=None, silence_logs=logging.ERROR) as lc, \
            Client(lc) as client:
        # Load the classifier on every worker before timing (once per worker, as in a run).
        settings = CountSettings(device="cpu", tile_size=tile)
        client.gather([client.submit(_warm, settings, workers=[w], pure=False)
                       for w in client.nthreads()])
        start_s = time.perf_counter() - t0
        load_before = os.getloadavg()[0]
        cpu0 = client.run(_cpu_s)
        cells_csv = out / f"cells_{workers}w_{tile}.csv"
        t = time.perf_counter()
        with get_task_stream(client) as ts:
            report = count_cohort([path], cells_csv, out / f"counts_{workers}w_{tile}.csv",
                                  client=client,
                                  settings=settings)
        wall = time.perf_counter() - t
        load_after = os.getloadavg()[0]
        rss = client.run(_rss_mb)
        cpu = client.run(_cpu_s)
        cpu_s = sum(cpu[w] - cpu0.get(w, 0.0) for w in cpu)
        busy = sum(ss["stop"] - ss["start"] for task in ts.data for ss in task["startstops"]
                   if ss["action"] == "compute")
        n_tasks = len(ts.data)
    cells = pd.read_csv(cells_csv)
    idle = workers * wall - busy
    import tifffile

    from napari_ddrnet.cohort import worker_classifier
    from napari_ddrnet.pipeline import _overlap_px

    with tifffile.TiffFile(path) as tf:
        h, w = tf.series[0].shape[:2]
    halo = _overlap_px(PX_UM, worker_classifier(CountSettings(device="cpu")).crop_fov_um)
    read_px = sum((min(h, k + tile + halo) - max(0, k - halo))
                  * (min(w, l_ + tile + halo) - max(0, l_ - halo))
                  for k in range(0, h, tile) for l_ in range(0, w, tile))
    return {"megapixels": round(h * w / 1e6, 1), "workers": workers, "tile": tile,
            "tasks": n_tasks, "cluster_start_s": round(start_s, 1), "seconds": round(wall, 1),
            "s_per_mp": round(wall / (h * w / 1e6), 3),
            "busy_s": round(busy, 1), "worker_cpu_s": round(cpu_s, 1),
            "overhead_pct": round(100 * idle / (workers * wall), 1),
            "overhead_ms_per_task": round(1000 * idle / max(1, n_tasks), 1),
            "read_per_px": round(read_px / (h * w), 2),
            "peak_rss_mb_per_worker": [round(v) for v in rss.values()],
            "wbc_placed": len(truth), "wbc_found": len(cells),
            "wbc_matched": _matched(cells, truth), "failed": len(report.failed),
            "cells_sha256": hashlib.sha256(cells_csv.read_bytes()).hexdigest()[:16],
            "loadavg_1min_before_after": [round(load_before, 1), round(load_after, 1)]}


def _warm(settings) -> None:
    from napari_ddrnet.cohort import worker_classifier

    clf = worker_classifier(settings)
    clf.predict_proba(np.zeros((8, clf.input_size, clf.input_size, 3), np.uint8))


def empty_task_overhead(workers: int = 2, n: int = 2000) -> dict:
    """Wall time per no-op task through the scheduler (the floor on per-task cost)."""
    import logging

    from distributed import Client, wait

    from napari_ddrnet.cohort import local_cluster

    with local_cluster(workers, dashboard_address=None, silence_logs=logging.ERROR) as lc, \
            Client(lc) as client:
        wait(client.map(int, range(100), pure=False))  # warm up
        t = time.perf_counter()
        wait(client.map(int, range(n), pure=False))
        wall = time.perf_counter() - t
    return {"workers": workers, "tasks": n, "seconds": round(wall, 2),
            "ms_per_task": round(1000 * wall / n, 2),
            "worker_ms_per_task": round(1000 * wall * workers / n, 2)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=32768, help="big slide side (0: skip)")
    ap.add_argument("--big-workers", type=int, nargs="+", default=[2])
    ap.add_argument("--medium", type=int, default=8192, help="speed-up slide side (0: skip)")
    ap.add_argument("--sweep", type=int, default=4096, help="tile-sweep slide side (0: skip)")
    ap.add_argument("--tile-sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--tile", type=int, default=2048, help="tile for the medium and big runs")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--tmp", type=Path, default=None, help="folder for the slides (GBs)")
    ap.add_argument("--tag", default="cohort", help="results file name (<tag>.json)")
    args = ap.parse_args(argv)
    payload: dict = {"machine": machine(), "loadavg_at_start": os.getloadavg(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "args": {k: str(v) for k, v in vars(args).items()}}

    def save():
        write_json(args.out / f"{args.tag}.json", payload)

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        payload["empty_tasks"] = empty_task_overhead()
        print("empty tasks:", payload["empty_tasks"], flush=True)
        save()
        if args.sweep:
            path = tmp / "sweep.ome.tif"
            truth = write_slide(path, args.sweep, seed=100)
            rows = []
            for tile in args.tile_sizes:
                rows.append(run_slide(path, truth, 2, tile, tmp))
                print(rows[-1], flush=True)
                payload["sweep"] = rows
                save()
            print_table(rows, ["megapixels", "tile", "tasks", "seconds", "busy_s",
                               "overhead_pct", "overhead_ms_per_task", "read_per_px",
                               "peak_rss_mb_per_worker", "wbc_found", "wbc_placed"])
        if args.medium:
            path = tmp / "medium.ome.tif"
            # The big slide's pool of fields (seed 300): the peak RSS of the two runs then
            # compares slide sizes, not field contents (a field's cells set its tile's peak).
            truth = write_slide(path, args.medium, seed=300)
            rows = []
            for workers in (1, 2):
                rows.append(run_slide(path, truth, workers, args.tile, tmp))
                print(rows[-1], flush=True)
                payload["medium"] = rows
                save()
            payload["medium_speedup"] = round(rows[0]["seconds"] / rows[1]["seconds"], 2)
            payload["medium_identical"] = rows[0]["cells_sha256"] == rows[1]["cells_sha256"]
            print_table(rows, ["megapixels", "workers", "tasks", "seconds", "s_per_mp",
                               "worker_cpu_s", "overhead_pct", "peak_rss_mb_per_worker",
                               "wbc_found", "wbc_matched", "wbc_placed", "cells_sha256"])
            print(f"speed-up 1 -> 2 workers: {payload['medium_speedup']}x (target >= 1.6); "
                  f"identical CSVs: {payload['medium_identical']}", flush=True)
            save()
        if args.side:
            path = tmp / "big.ome.tif"
            t = time.perf_counter()
            truth = write_slide(path, args.side, seed=300)
            payload["big_write_s"] = round(time.perf_counter() - t, 1)
            print(f"wrote {args.side}^2 slide in {payload['big_write_s']} s "
                  f"({path.stat().st_size / 1e9:.2f} GB)", flush=True)
            rows = []
            for workers in args.big_workers:
                rows.append(run_slide(path, truth, workers, args.tile, tmp))
                print(rows[-1], flush=True)
                payload["big"] = rows
                save()
            print_table(rows, ["megapixels", "workers", "tasks", "seconds", "s_per_mp",
                               "overhead_pct", "peak_rss_mb_per_worker", "wbc_found",
                               "wbc_matched", "wbc_placed"])
    save()
    return payload


if __name__ == "__main__":
    main()
