"""Does a dask worker's memory grow with the number of tiles it has analysed?

Usage::

    python -m benchmarks.worker_memory [--side 32768] [--tiles 120] [--every 10]

One synthetic pyramidal slide (as :mod:`benchmarks.cohort` writes it); its first ``--tiles``
tiles are analysed one after another on a one-worker local cluster, once with the workers'
statistical profiler on (distributed's default) and once with it off
(:data:`napari_ddrnet.cohort.WORKER_DASK_CONFIG`, what our clusters use). After every
``--every`` tiles the worker's current and peak RSS are printed; ``growth_mb_per_100_tiles``
is the slope of current RSS over the second half of the tiles (the first tiles warm caches).
``--allocator-too`` adds a run with the profiler off and glibc's mmap threshold fixed
(:func:`napari_ddrnet.memory.return_tile_buffers_to_os`, which the widget's slide runs set and
cohort workers do not).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .cohort import write_slide
from .common import machine, print_table, write_json


def _rss() -> tuple[float, float]:
    """(current, peak) RSS of this process in MB."""
    from benchmarks.common import peak_rss_mb

    with open("/proc/self/statm") as fh:
        cur = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return cur, peak_rss_mb()


def _set_mmap_threshold() -> bool:
    from napari_ddrnet.memory import return_tile_buffers_to_os

    return return_tile_buffers_to_os()


def run(path: Path, tiles: int, every: int, profiler: bool, mmap_threshold: bool = False) -> dict:
    """Tiles of ``path`` one by one on a fresh one-worker cluster; RSS samples.

    ``mmap_threshold=True`` sets glibc's mmap threshold in the worker first
    (:func:`napari_ddrnet.memory.return_tile_buffers_to_os`, as the widget's slide runs do;
    cohort workers leave glibc's adaptive threshold alone).
    """
    import dask
    from distributed import Client

    from napari_ddrnet.cohort import CountSettings, _Planned, image_task, local_cluster, tile_task

    settings = CountSettings(device="cpu", tile_size=2048)
    kw = {"dashboard_address": None, "silence_logs": logging.ERROR}
    if profiler:  # distributed's default, as on a cluster started without our settings
        from distributed import LocalCluster

        with dask.config.set({"distributed.worker.profile.enabled": True}):
            cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, **kw)
    else:  # what napari-ddrnet count --workers starts
        cluster = local_cluster(1, **kw)
    samples = []
    t0 = time.perf_counter()
    label = f"profiler {'on' if profiler else 'off'}" + (", mmap threshold set" if
                                                           mmap_threshold else "")
    with cluster, Client(cluster) as client:
        if mmap_threshold:
            client.run(_set_mmap_threshold)
        enabled = list(client.run(
            lambda: dask.config.get("distributed.worker.profile.enabled")).values())[0]
        planned = client.submit(image_task, str(path), settings, pure=False).result()
        assert isinstance(planned, _Planned), planned
        plan_f = client.scatter(planned.plan, hash=False)
        n = min(tiles, len(planned.plan.tiles))
        for i in range(n):
            client.submit(tile_task, str(path), plan_f, i, settings, pure=False).result()
            if (i + 1) % every == 0 or i + 1 == n:
                cur, peak = list(client.run(_rss).values())[0]
                samples.append({"tiles": i + 1, "rss_mb": round(cur), "peak_mb": round(peak),
                                "seconds": round(time.perf_counter() - t0, 1)})
                print(label, samples[-1], flush=True)
    half = [s for s in samples if s["tiles"] > n // 2]
    slope = float(np.polyfit([s["tiles"] for s in half], [s["rss_mb"] for s in half], 1)[0]) \
        if len(half) >= 2 else float("nan")
    return {"profiler": enabled, "mmap_threshold": mmap_threshold, "tiles": n,
            "first_rss_mb": samples[0]["rss_mb"], "last_rss_mb": samples[-1]["rss_mb"],
            "peak_mb": samples[-1]["peak_mb"],
            "growth_mb_per_100_tiles": round(100 * slope, 1), "samples": samples}


def _both_peaks() -> dict:
    import resource

    from benchmarks.common import peak_rss_mb

    return {"ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "vmhwm_mb": round(peak_rss_mb())}


def inherited_peak(touch_mb: int = 1500) -> dict:
    """Why worker peaks are read as ``VmHWM``: touch ``touch_mb`` here, free it, start a worker,
    and compare its ``ru_maxrss`` (carried across ``exec``) with its own ``VmHWM``."""
    from distributed import Client

    from napari_ddrnet.cohort import local_cluster

    block = np.ones(touch_mb * 2**20, np.uint8)
    del block
    out = {"parent": _both_peaks()}
    with local_cluster(1, dashboard_address=None, silence_logs=logging.ERROR) as lc, \
            Client(lc) as client:
        out["worker_at_start"] = list(client.run(_both_peaks).values())[0]
    print("inherited peak:", out, flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=32768)
    ap.add_argument("--tiles", type=int, default=120)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--tmp", type=Path, default=None, help="folder for the slide (GBs)")
    ap.add_argument("--inherited-peak", action="store_true",
                    help="only show a fresh worker's ru_maxrss vs VmHWM after this process "
                         "touched 1.5 GB (worker_memory_inherited.json)")
    ap.add_argument("--allocator-too", action="store_true",
                    help="a third run: profiler off, glibc's mmap threshold fixed at 1 MiB")
    args = ap.parse_args(argv)
    payload: dict = {"machine": machine(), "loadavg_at_start": os.getloadavg(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "args": {k: str(v) for k, v in vars(args).items()}, "runs": []}
    if args.inherited_peak:
        payload = {"machine": payload["machine"], "inherited_peak": inherited_peak()}
        write_json(args.out / "worker_memory_inherited.json", payload)
        return payload
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "slide.ome.tif"
        write_slide(path, args.side, seed=300)
        variants = [(True, False), (False, False)] + ([(False, True)] if args.allocator_too
                                                      else [])
        for profiler, threshold in variants:
            payload["runs"].append(run(path, args.tiles, args.every, profiler, threshold))
            write_json(args.out / "worker_memory.json", payload)
    print_table(payload["runs"], ["profiler", "mmap_threshold", "tiles", "first_rss_mb",
                                  "last_rss_mb", "peak_mb", "growth_mb_per_100_tiles"])
    return payload


if __name__ == "__main__":
    main()
