"""Adapting the classifier to an unseen laboratory from a few reviewed cells per class.

Two labs the model never trained on:

- **LISC** (Rezatofighi et al.; Axioskop 40, Sony camera, Tehran; 5 classes): single-cell crops
  cut as in ``count --single-cell`` (:func:`napari_ddrnet.crop.crop_centre`). Training cells
  are ``k`` distinct cell groups per class (one crop each); the test set is every crop of the
  other groups (the set holds shifted crops of each cell: never split it by file).
- **BCCD** fields (one WBC class per field): crops re-cut from the plugin's own segmentation,
  the detection matching the expert WBC box (IoU >= 0.5) as in ``benchmarks/accuracy.py``;
  the shipped model trained on the BCCD ``train`` fields, so ``k`` ``train`` fields per class
  are the lab's reviewed cells and the 69 ``test`` fields are the test set.

For each ``k`` and seed: the base model, then :func:`napari_ddrnet.adapt.fine_tune` (the
method ``adapt_from_cells`` runs), and optionally the quick-probe baseline (AdaBN, then 60
plain AdamW steps, no regulariser or augmentation). Accuracy is given restricted to the classes
present (argmax over them) and plain (argmax over all 8). Forgetting: PBC test accuracy of an
adapted model. Time: ``adapt_from_cells`` end to end on 250 LISC cells (50 per class).

Usage::

    python -m benchmarks.adaptation [--seeds 5] [--sizes 5 10 25] [--baseline] [--no-tta]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_ddrnet.adapt import (  # noqa: E402
    AdaptConfig,
    adapt_from_cells,
    cut_crops,
    fine_tune,
    predict_proba,
)
from napari_ddrnet.crop import crop_centre  # noqa: E402
from napari_ddrnet.scale import resolve_pixel_size  # noqa: E402
from napari_ddrnet.segment import segment_wbc  # noqa: E402
from napari_ddrnet.weights import load_bundle  # noqa: E402
from training.bccd import load_fields  # noqa: E402
from training.detection_eval import box_iou  # noqa: E402
from training.paths import data_root  # noqa: E402

from .common import machine, print_table, write_json  # noqa: E402

#: The quick probe the method must beat: AdaBN + 60 AdamW steps, nothing else.
BASELINE = AdaptConfig(steps=60, l2sp=0.0, label_smoothing=0.0, stain_jitter=0.0,
                       brightness=0.0)


def tune_groups(y: np.ndarray, group: np.ndarray, fraction: float = 1 / 3) -> np.ndarray:
    """The fixed "tune" part of LISC: per class, the first ``fraction`` of its cell groups in
    SHA-256 order of the group name. Hyper-parameters were chosen on draws from these groups
    only; reported figures come from the other groups (the "report" part)."""
    first = pd.DataFrame({"y": y, "g": group}).drop_duplicates("g")
    tune = []
    for _, gs in first.groupby("y"):
        names = sorted(gs["g"], key=lambda g: hashlib.sha256(str(g).encode()).hexdigest())
        tune += names[:int(len(names) * fraction)]
    return np.isin(group, tune)


def lisc_set(input_size: int, part: str = "report") -> dict:
    """LISC crops (centred square, as single-cell mode), class names and cell groups of one
    part (``"report"``, ``"tune"`` or ``"all"``; :func:`tune_groups`). Every crop of the part
    is also the lab's unlabelled run (``"lab"``)."""
    root = data_root() / "lisc"
    lab = pd.read_csv(root / "labels.csv")
    if part != "all":
        tune = tune_groups(lab["class"].to_numpy(str), lab["cell_group"].to_numpy(str))
        lab = lab[tune if part == "tune" else ~tune].reset_index(drop=True)
    crops = np.stack([crop_centre(np.asarray(Image.open(root / f).convert("RGB")), input_size)
                      for f in lab["file"]])
    return {"crops": crops, "y": lab["class"].to_numpy(str),
            "group": lab["cell_group"].to_numpy(str), "file": (root / lab["file"]).to_numpy(),
            "lab": np.ones(len(lab), bool)}


def bccd_set(bundle, max_train_per_class: int = 30) -> dict:
    """One crop per BCCD field with one WBC class: the plugin's detection matching the expert
    box, re-cut exactly as ``adapt_from_cells`` does; unmatched fields are counted apart.

    The shipped model trained on the BCCD ``train`` fields, so training cells are drawn from
    ``train`` (at most ``max_train_per_class`` fields a class are segmented, to save time) and
    every ``test`` field is the test set: the "before" column is then a fair held-out figure.
    """
    rng = np.random.default_rng(0)
    fields = [f for f in load_fields() if f.split in ("train", "test") and f.wbc_class]
    keep = []
    for c in sorted({f.wbc_class for f in fields}):
        tr = [f for f in fields if f.split == "train" and f.wbc_class == c]
        keep += [tr[i] for i in sorted(rng.permutation(len(tr))[:max_train_per_class])]
    keep += [f for f in fields if f.split == "test"]
    rows, images, missed = [], {}, 0
    for f in keep:
        rgb = f.image()
        px = resolve_pixel_size(rgb).um
        cells = segment_wbc(rgb, px).cells
        iou = (box_iou(cells[["min_row", "min_col", "max_row", "max_col"]].to_numpy(),
                       f.boxes()[:1])[:, 0] if len(cells) else np.zeros(0))
        if not len(iou) or iou.max() < 0.5:
            missed += 1
            continue
        row = cells.iloc[int(iou.argmax())].to_dict()
        rows.append({**row, "image": f.name, "pixel_size_um": px, "reviewed_class": f.wbc_class,
                     "split": f.split})
        images[f.name] = rgb
    table = pd.DataFrame(rows)
    crops = cut_crops(table, bundle.input_size, bundle.crop_fov_um, images)
    # The lab's unlabelled run: every matched crop of both splits (no labels used).
    return {"crops": crops, "y": table["reviewed_class"].to_numpy(str),
            "group": table["image"].to_numpy(str), "missed": missed,
            "lab": np.ones(len(table), bool),
            "pool": (table["split"] == "train").to_numpy(),
            "test": (table["split"] == "test").to_numpy()}


def draw(y: np.ndarray, group: np.ndarray, k: int, seed: int, min_test: int = 2,
         pool: np.ndarray | None = None, test_mask: np.ndarray | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
    """``k`` groups per class for training (one crop each; at most all but ``min_test`` groups
    of a class), every crop of the other groups for test. With ``pool``/``test_mask``,
    training groups come from ``pool`` only and the test set is ``test_mask``."""
    rng = np.random.default_rng(seed)
    pool = np.ones(len(y), bool) if pool is None else pool
    train = []
    for c in sorted(set(y)):
        groups = np.unique(group[(y == c) & pool])
        disjoint = test_mask is not None and not (test_mask & pool).any()
        n = min(k, len(groups) - (0 if disjoint else min_test))
        for g in rng.choice(groups, max(n, 0), replace=False):
            train.append(rng.choice(np.flatnonzero(group == g)))
    train = np.asarray(train, int)
    if test_mask is not None:
        return train, np.flatnonzero(test_mask & ~np.isin(group, group[train]))
    test = np.flatnonzero(~np.isin(group, group[train]))
    return train, test


def accuracies(probs: np.ndarray, y_idx: np.ndarray, present: list[int]) -> tuple[float, float]:
    """(restricted to the classes present, plain) accuracy."""
    restricted = np.asarray(present)[probs[:, present].argmax(1)]
    return float((restricted == y_idx).mean()), float((probs.argmax(1) == y_idx).mean())


def run_set(name: str, data: dict, bundle, sizes, seeds, tta: bool, baseline: bool,
            log, on_seed=None, reviewed_only: bool = True) -> tuple[list[dict], dict]:
    """Every draw of ``k`` cells per class and seed: base model, the method with the lab's
    other crops unlabelled in AdaBN (``adapt``: ``adapt_from_cells(unreviewed=True)``), the
    same with the training cells alone (``reviewed``: the default of ``adapt_from_cells``),
    and optionally the quick-probe ``baseline``."""
    classes = list(bundle.classes)
    y = np.array([classes.index(c) for c in data["y"]])
    present = sorted(set(y.tolist()))
    base_probs = predict_proba(bundle.model, data["crops"], bundle.mean, bundle.std, tta=tta)
    runs, models = [], {}
    methods = [("adapt", AdaptConfig(), True)]
    if reviewed_only:
        methods.append(("reviewed", AdaptConfig(), False))
    if baseline:
        methods.append(("baseline", BASELINE, False))
    # Seeds outermost: an interrupted run still has every size for the seeds it finished.
    for seed in seeds:
        for k in sizes:
            train, test = draw(data["y"], data["group"], k, seed, pool=data.get("pool"),
                               test_mask=data.get("test"))
            before = accuracies(base_probs[test], y[test], present)
            row = {"set": name, "k": k, "seed": seed, "n_train": len(train),
                   "n_test": len(test), "before": before}
            # The lab's run without labels: every crop of the lab but the training ones.
            unl = data["crops"][np.setdiff1d(np.flatnonzero(data["lab"]), train)]
            for method, cfg, with_lab in methods:
                t0, c0 = time.perf_counter(), time.process_time()
                model = fine_tune(bundle, data["crops"][train], y[train], cfg, seed=seed,
                                  unlabelled=unl if with_lab else None)
                secs = time.perf_counter() - t0
                row[f"{method}_cpu_s"] = time.process_time() - c0
                probs = predict_proba(model, data["crops"][test], bundle.mean, bundle.std,
                                      tta=tta)
                row[method] = accuracies(probs, y[test], present)
                row[f"{method}_s"] = secs
                if seed == seeds[0]:
                    models[(method, k)] = model
            runs.append(row)
            log(f"{name} k={k} seed={seed} n_train={len(train)} n_test={len(test)} "
                + " ".join(f"{m}={100 * row[m][0]:.1f}/{100 * row[m][1]:.1f}"
                           for m in ["before"] + [m for m, _, _ in methods])
                + f" ({row['adapt_s']:.1f} s wall, {row['adapt_cpu_s']:.1f} s CPU)")
        if on_seed is not None:
            on_seed(summarise(name, runs, sizes), runs, models)
    return summarise(name, runs, sizes), {"runs": runs, "models": models}


def summarise(name: str, runs: list[dict], sizes) -> list[dict]:
    """Mean ± sd over seeds per number of cells per class."""
    table = []
    for k in sizes:
        rs = [r for r in runs if r["k"] == k]
        if not rs:
            continue
        out = {"set": name, "cells/class": k, "seeds": len(rs),
               "train": f"{np.mean([r['n_train'] for r in rs]):.0f}",
               "test": f"{np.mean([r['n_test'] for r in rs]):.0f}"}
        for m in [m for m in ("before", "adapt", "reviewed", "baseline") if m in rs[0]]:
            for j, kind in enumerate(("restricted", "plain")):
                v = 100 * np.array([r[m][j] for r in rs])
                out[f"{m} {kind} %"] = (f"{v.mean():.1f} ± "
                                        f"{v.std(ddof=1) if len(v) > 1 else 0:.1f}")
        out["fit s"] = f"{np.median([r['adapt_s'] for r in rs]):.1f}"
        table.append(out)
    return table


def pbc_test(input_size: int, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    root = data_root() / "pbc"
    sp = pd.read_csv(root / "splits.csv")
    sp = sp[sp["split"] == "test"]
    if limit:  # stratified subsample, every class kept in proportion
        rng = np.random.default_rng(0)
        idx = [rng.choice(np.flatnonzero(sp["class"].to_numpy() == c),
                          min(n, max(1, limit * n // len(sp))), replace=False)
               for c, n in sp["class"].value_counts().items()]
        sp = sp.iloc[np.sort(np.concatenate(idx))]
    crops = np.stack([crop_centre(np.asarray(Image.open(root / f).convert("RGB")), input_size)
                      for f in sp["file"]])
    return crops, sp["class"].to_numpy(str)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds are first-seed .. first-seed + seeds - 1 (split a run)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 25])
    ap.add_argument("--sets", nargs="+", default=["lisc", "bccd"], choices=["lisc", "bccd"])
    ap.add_argument("--baseline", action="store_true",
                    help="also run the quick-probe baseline (AdaBN + 60 plain AdamW steps)")
    ap.add_argument("--no-tta", action="store_true",
                    help="evaluate single pass instead of the plugin's default 8-view TTA")
    ap.add_argument("--pbc-limit", type=int, default=None,
                    help="stratified subsample of the PBC test set for the forgetting check")
    ap.add_argument("--weights", type=Path, default=None, help="base model (default: shipped)")
    ap.add_argument("--no-timing", action="store_true",
                    help="skip the 250-cell adapt_from_cells timing")
    ap.add_argument("--lisc-part", default="report", choices=["report", "tune", "all"],
                    help="LISC cell groups to draw from and test on (tune_groups): report "
                    "figures come from the report part, hyper-parameters from the tune part")
    ap.add_argument("--no-reviewed-only", action="store_true",
                    help="skip the variant that adapts on the training cells alone")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--name", default="adaptation",
                    help="log and JSON file stem in --out (adaptation_<model> for a candidate, "
                         "so its run does not overwrite the default model's)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tta = not args.no_tta
    bundle = load_bundle(args.weights)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / f"{args.name}.log"

    log_path.write_text("")

    def log(msg: str = "") -> None:  # appended at once: an interrupted run keeps its lines
        print(msg, flush=True)
        with open(log_path, "a") as fh:
            fh.write(msg + "\n")

    log(f"adaptation benchmark, base model {bundle.meta.get('name')} "
        f"({args.weights or 'shipped'}), TTA {'on' if tta else 'off'}, seeds {seeds}, "
        f"LISC part {args.lisc_part}, "
        f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    payload: dict = {"machine": machine(), "tta": tta, "seeds": seeds, "sizes": args.sizes,
                     "lisc_part": args.lisc_part,
                     "config": AdaptConfig().__dict__, "sets": {}}
    # Time for 250 reviewed cells, end to end: crops re-cut from the files, 20 % held out and
    # scored, and every other LISC crop an unreviewed cell of the same run (AdaBN uses them).
    if "lisc" in args.sets and not args.no_timing:  # first: an interrupted run keeps it
        lisc = lisc_set(bundle.input_size, "all")
        rng = np.random.default_rng(0)
        pick = np.concatenate([rng.choice(np.flatnonzero(lisc["y"] == c), 50, replace=False)
                               for c in sorted(set(lisc["y"]))])
        reviewed = np.where(np.isin(np.arange(len(lisc["y"])), pick), lisc["y"], "")
        cells = pd.DataFrame({"image": lisc["file"].astype(str), "reviewed_class": reviewed,
                              "cell_group": lisc["group"]})
        import tempfile

        c0 = time.process_time()
        with tempfile.TemporaryDirectory() as tmp:
            rep = adapt_from_cells(cells, Path(tmp) / "m.safetensors", single_cell=True,
                                   base_weights=args.weights)
        cpu = time.process_time() - c0
        timing = {"cells": len(pick), "unreviewed": len(cells) - len(pick),
                  "n_train": rep.n_train, "n_holdout": rep.n_holdout,
                  "seconds": round(rep.seconds, 1), "cpu_seconds": round(cpu, 1),
                  "before": rep.before_accuracy,
                  "after": rep.after_accuracy, "load_average": os.getloadavg()[0],
                  "phases_s": {k: round(v, 1) for k, v in rep.timings.items()}}
        log()
        log(f"adapt_from_cells on 250 LISC cells (single-cell, {rep.n_train} train / "
            f"{rep.n_holdout} held out, {len(cells) - len(pick)} unreviewed): "
            f"{rep.seconds:.1f} s wall ({cpu:.1f} s CPU) on "
            f"{args.threads} threads, "
            f"load average {os.getloadavg()[0]:.1f}; held-out {100 * rep.before_accuracy:.1f} % "
            f"-> {100 * rep.after_accuracy:.1f} %; phases (s wall): "
            + ", ".join(f"{k} {v:.1f}" for k, v in rep.timings.items()))
        payload["time_250"] = timing
    tables, models = [], {}
    for name in args.sets:
        t0 = time.perf_counter()
        data = (lisc_set(bundle.input_size, args.lisc_part) if name == "lisc"
                else bccd_set(bundle))
        log(f"{name}: {len(data['y'])} crops, {len(set(data['group']))} groups, classes "
            f"{ {c: int(n) for c, n in pd.Series(data['y']).value_counts().items()} }"
            + (f", {data['missed']} fields without a matching detection" if "missed" in data
               else "") + f" (prepared in {time.perf_counter() - t0:.0f} s)")
        def partial(table, runs, _models, name=name):
            payload["sets"][name] = {"table": table, "runs": runs}
            write_json(args.out / f"{args.name}.json", payload)

        table, res = run_set(name, data, bundle, args.sizes, seeds, tta, args.baseline, log,
                             partial, reviewed_only=not args.no_reviewed_only)
        tables += table
        models[name] = res["models"]
        payload["sets"][name] = {"table": table, "runs": res["runs"],
                                 **({"missed_fields": data["missed"]} if "missed" in data
                                    else {})}
    cols = list(tables[0])
    log()
    log("Accuracy on held-out groups, mean ± sd over seeds (restricted = argmax over the "
        "classes present; plain = over all 8)")
    _log_table(tables, cols, log)

    # Forgetting: PBC test accuracy of the base model and of a model adapted with 10 cells/class.
    crops, y = pbc_test(bundle.input_size, args.pbc_limit)
    classes = list(bundle.classes)
    yi = np.array([classes.index(c) for c in y])
    base_acc = _acc(bundle.model, crops, yi, bundle, tta)
    forget = [{"model": "base", "PBC test %": f"{100 * base_acc:.1f}"}]
    for name, by_k in models.items():
        ks = sorted({k for _, k in by_k})
        k = 10 if 10 in ks else max(ks)
        for method in [m for m, kk in by_k if kk == k]:
            acc = _acc(by_k[(method, k)], crops, yi, bundle, tta)
            forget.append({"model": f"adapted on {name} ({method}), {k}/class, seed {seeds[0]}",
                           "PBC test %": f"{100 * acc:.1f}"})
    log()
    log(f"Forgetting: PBC test ({len(y)} crops, crop_centre) before and after adaptation")
    _log_table(forget, ["model", "PBC test %"], log)
    payload["forgetting"] = {"n": len(y), "rows": forget}

    write_json(args.out / f"{args.name}.json", payload)
    return payload


def _acc(model, crops, yi, bundle, tta) -> float:
    return float((predict_proba(model, crops, bundle.mean, bundle.std, tta=tta).argmax(1)
                  == yi).mean())


def _log_table(rows: list[dict], cols: list[str], log) -> None:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print_table(rows, cols)
    for line in buf.getvalue().rstrip("\n").splitlines():
        log(line)


if __name__ == "__main__":
    main()
