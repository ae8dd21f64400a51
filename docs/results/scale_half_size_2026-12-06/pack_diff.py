"""How many crops of two crop packs (``training.packs`` .npz) differ, byte for byte.

Usage (project root)::

    PYTHONPATH=src:. python docs/results/scale_half_size_2026-12-06/pack_diff.py A.npz B.npz ...

Arguments come in pairs (A B): for each, the crops that differ, of how many, and whether the
labels and names agree.
"""

import sys

import numpy as np


def crops(path: str) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    z = np.load(path, allow_pickle=True)
    data, off = z["data"], z["offsets"]
    return [data[off[i]:off[i + 1]].tobytes() for i in range(len(off) - 1)], z["labels"], z["names"]


args = sys.argv[1:]
for a, b in zip(args[::2], args[1::2], strict=True):
    ca, la, na = crops(a)
    cb, lb, nb = crops(b)
    same_index = len(ca) == len(cb) and np.array_equal(la, lb) and np.array_equal(na, nb)
    changed = sum(x != y for x, y in zip(ca, cb, strict=False)) if same_index else "n/a"
    print(f"{a} vs {b}: {len(ca)} / {len(cb)} crops, labels and names "
          f"{'agree' if same_index else 'DIFFER'}, crops changed: {changed}")
