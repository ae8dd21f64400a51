"""What the "unlike the training data" check adds to plain ``count`` per field.

Each field's crops are classified (8-view TTA, as ``count``) and, for the check, passed once
more through the unfused model (:func:`napari_ddrnet.shift_score.layer_sums`). Both are
timed on the same crops in the same run (median of repeats, one torch thread as in a dask
worker); the ratio is the figure to read, not the milliseconds (the machines are noisy).

Usage::

    python -m benchmarks.shift_cost [--repeats 30]

Writes ``benchmarks/results/shift_cost.log``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from napari_ddrnet.classify import Classifier
from napari_ddrnet.pipeline import analyze
from napari_ddrnet.shift_score import layer_sums
from napari_ddrnet.synthetic import synthetic_smear

ROOT = Path(__file__).resolve().parents[1]


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    clf = Classifier(device="cpu")
    image, _ = synthetic_smear(pixel_size_um=0.1, seed=0)
    crops = analyze(image, 0.1, clf, keep_crops=True).crops  # the sample field's cells
    classify = median_ms(lambda: clf.predict_proba(crops), args.repeats)
    check = median_ms(lambda: layer_sums(clf.bundle, crops), args.repeats)
    line = (f"{len(crops)} crops (the synthetic sample field), 1 torch thread, median of "
            f"{args.repeats}: classify with TTA {classify:.1f} ms, shift check {check:.1f} ms, "
            f"check / classify = {check / classify:.2f}")
    print(line)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shift_cost.log").write_text(line + "\n")
    return line


if __name__ == "__main__":
    main()
