"""Time of the pixel-size estimate before and after black fill became background
(interleaved rounds, median ms per image) on 15 images each of BCCD ``test``, TXL-PBC BCD and
Raabin-WBC (development part) and LISC.

Usage (project root; see ``_old_scale.py`` for ``/tmp/head_scale.py``)::

    PYTHONPATH=src:.:docs/results/scale_half_size_2026-12-06 \
        python docs/results/scale_half_size_2026-12-06/estimate_cost.py
"""

import glob
import time

import numpy as np
from _old_scale import old
from skimage import io

import napari_ddrnet.scale as sc
from training.bccd import load_fields
from training.detection_eval import load_txl_fields
from training.paths import data_root

lisc = sorted(glob.glob(str(data_root() / "lisc" / "*" / "*.jpg")))[::80][:15]
sets = {"bccd": [f.image() for f in load_fields("test")[:15]],
        "bcd": [f.rgb() for f in load_txl_fields("dev", sources=("bcd",))[:15]],
        "raabin": [f.rgb() for f in load_txl_fields("dev", sources=("raabin",))[:15]],
        "lisc": [io.imread(p)[..., :3] for p in lisc]}
for name, images in sets.items():
    times = {"before": [], "after": []}
    order = (("before", old.estimate_pixel_size), ("after", sc.estimate_pixel_size))
    for r in range(4):
        for key, fn in (order if r % 2 else order[::-1]):
            for im in images:
                t0 = time.perf_counter()
                fn(im)
                times[key].append(time.perf_counter() - t0)
    print(name, {k: round(1000 * float(np.median(v)), 1) for k, v in times.items()})
