"""``specimen.channel_max`` against the reduction it replaced, through the segmentation and
the red-cell pixel-size estimate, per source: for a sample of images of each, the nucleus
labels, the cell table and the pixel size must be the same to the bit. Run from the project
root: ``PYTHONPATH=. python docs/results/channel_max_2026-12-07/identical.py``."""

import csv
import time
from pathlib import Path

import numpy as np
from skimage import io

import napari_ddrnet.specimen as specimen
from benchmarks.pixel_size import txl_items
from napari_ddrnet.scale import estimate_pixel_size
from napari_ddrnet.segment import segment_wbc
from training.bccd import load_fields
from training.paths import data_root

FAST = specimen.channel_max


def run(rgb: np.ndarray):
    seg = segment_wbc(rgb)
    return seg.nuclei, seg.cells, estimate_pixel_size(rgb)


def same(image: np.ndarray) -> bool:
    specimen.channel_max = FAST
    a = run(image)
    specimen.channel_max = lambda rgb: rgb.max(axis=-1)  # before 2026-12-07
    try:
        b = run(image)
    finally:
        specimen.channel_max = FAST
    return (np.array_equal(a[0], b[0]) and a[1].equals(b[1]) and a[2] == b[2])


root = data_root()
sources: dict[str, list[Path]] = {
    "bccd (every field)": [f.image_path for f in load_fields()],
    "kaggle TEST (every 25th; rotated copies, black fill)": sorted(
        (root / "kaggle_blood_cells" / "TEST").rglob("*.jp*g"))[::25],
    "lisc (every 10th)": [root / "lisc" / r["file"] for r in
                          list(csv.DictReader(open(root / "lisc" / "labels.csv")))[::10]],
    "pbc (every 100th)": sorted((root / "pbc").rglob("*.jp*g"))[::100],
}
for src, path, _ in txl_items(5):
    sources.setdefault(f"txl-pbc {src} (every 5th)", []).append(path)
for name, paths in sources.items():
    t0 = time.time()
    n_same = sum(same(io.imread(p)[..., :3]) for p in paths)
    print(f"{name}: {n_same} of {len(paths)} images identical ({time.time() - t0:.0f} s)",
          flush=True)
