"""Largest Python-side (tracemalloc) peak of the 64-field scale mosaic through the tiled path,
and the allocations alive at it (thirteenth session; how the sample windows were found).

Usage (repo root; ``PYTHONPATH=<worktree>/src`` for an older commit, as run.sh does)::

    python docs/results/scale_windows_2026-12-07/trace_peak.py [FIELDS]
"""

import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks.scale import build_mosaic  # noqa: E402
from napari_ddrnet.classify import Classifier  # noqa: E402
from napari_ddrnet.image_io import read_image  # noqa: E402
from napari_ddrnet.pipeline import analyze  # noqa: E402

n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
torch.set_num_threads(2)
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / f"mosaic_{n}.tif"
    build_mosaic(n, path)
    clf = Classifier(None, device="cpu")
    levels, _px = read_image(str(path))
    tracemalloc.start(30)
    best: list = [0, None]
    done = threading.Event()

    def sample() -> None:  # a snapshot whenever the traced total grows by 10 %
        while not done.is_set():
            cur, _ = tracemalloc.get_traced_memory()
            if cur > 1.1 * best[0] and cur > 20e6:
                best[0], best[1] = cur, tracemalloc.take_snapshot()
            time.sleep(0.05)

    t = threading.Thread(target=sample)
    t.start()
    analyze(levels[0], 0.1, clf, return_labels=False, tile_size=1024)
    done.set()
    t.join()
print(f"{n} fields: traced peak {tracemalloc.get_traced_memory()[1] / 1e6:.1f} MB "
      f"(snapshot at {best[0] / 1e6:.1f} MB); largest allocations alive then:")
for s in best[1].statistics("traceback")[:6]:
    where = [f.filename.split("site-packages/")[-1].split("src/")[-1] + f":{f.lineno}"
             for f in s.traceback if "napari_ddrnet" in f.filename or "dask" in f.filename]
    print(f"  {s.size / 1e6:6.1f} MB in {s.count} blocks  {' <- '.join(where[-3:][::-1])}")
