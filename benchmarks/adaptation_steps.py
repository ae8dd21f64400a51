"""Tune-part sweep of the adaptation's fine-tuning schedule (LISC, 10 cells per class).

Usage::

    python -m benchmarks.adaptation_steps [--seeds 100 101 102 103 104]

Draws come from the *tune* part of LISC only (:func:`benchmarks.adaptation.tune_groups`), so
nothing here touches the groups the reported adaptation figures are measured on. Each draw
fine-tunes the shipped model with the default :class:`~napari_ddrnet.adapt.AdaptConfig` and a
few variants (more steps, learning rate, L2-SP weight, stronger jitter) and prints the 5-class
accuracy (8-view TTA) on the draw's other groups, then mean ± sd per variant.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from napari_ddrnet.adapt import AdaptConfig, fine_tune, predict_proba  # noqa: E402
from napari_ddrnet.weights import load_bundle  # noqa: E402

from .adaptation import accuracies, draw, lisc_set  # noqa: E402

VARIANTS = {
    "s60": AdaptConfig(steps=60),  # the default before 2026-12-01 (60-200 steps) for <= 192 cells
    "s150": AdaptConfig(steps=150),
    "s300": AdaptConfig(steps=300),
    "s150_lr2e-3": AdaptConfig(steps=150, lr=2e-3),
    "s150_l2sp1e-3": AdaptConfig(steps=150, l2sp=1e-3),
    "s150_jit": AdaptConfig(steps=150, stain_jitter=0.1, brightness=0.06),
}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102, 103, 104])
    ap.add_argument("--k", type=int, nargs="+", default=[10], help="reviewed cells per class")
    ap.add_argument("--part", default="tune", choices=["tune", "report"],
                    help="LISC part the draws come from (tune: for choosing; report: to confirm "
                         "a choice on draws never used for it)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = load_bundle()
    data = lisc_set(bundle.input_size, args.part)
    classes = list(bundle.classes)
    y = np.array([classes.index(c) for c in data["y"]])
    present = sorted(set(y.tolist()))
    res: dict[str, list[float]] = {f"{v} k={k}": [] for k in args.k for v in args.variants}
    for seed, k in [(s, k) for s in args.seeds for k in args.k]:
        train, test = draw(data["y"], data["group"], k, seed)
        for name in args.variants:
            cfg = VARIANTS[name]
            t = time.perf_counter()
            model = fine_tune(bundle, data["crops"][train], y[train], cfg, seed=seed)
            probs = predict_proba(model, data["crops"][test], bundle.mean, bundle.std, tta=True)
            acc = accuracies(probs, y[test], present)[0]
            res[f"{name} k={k}"].append(acc)
            print(seed, name, f"k={k}", len(train), len(test), f"{100 * acc:.1f}",
                  f"{time.perf_counter() - t:.1f}s", flush=True)
    for name, v in res.items():
        print(name, f"{100 * np.mean(v):.1f} ± {100 * np.std(v, ddof=1):.1f}")
    return res


if __name__ == "__main__":
    main()
