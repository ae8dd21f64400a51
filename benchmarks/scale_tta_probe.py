"""Scale test-time augmentation: the 8 dihedral views of each crop at zoom 1/1.15, 1 and 1.15
(24 views) against the shipped 8-view TTA, scored by the rule written before the run
(``docs/cross-source.md``, "averaging over scales as well as orientations", sixteenth session).

Each zoom's 8-view probabilities are computed once; the 8-view TTA is the zoom-1 set and the
24-view TTA the mean of the three (equal weights, so the same as one 24-view average).

Usage::

    python -m benchmarks.scale_tta_probe [--weights W] [--packs packs96_38]
        [--sets pbc_val bccd_valfold pbc_test bccd_fields lisc kaggle_test] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import napari_ddrnet.classify as classify_mod  # noqa: E402
from napari_ddrnet.classify import Classifier  # noqa: E402

from .accuracy import pbc_test_crops, shipped_on_bccd_fields  # noqa: E402
from .cross_source import lisc_crops  # noqa: E402

#: The zooms fixed before the run (>1 enlarges the centre, as ``training/augment.py``'s zoom).
ZOOMS = (1 / 1.15, 1.0, 1.15)
LISC_CLASSES = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")

_dihedral = classify_mod._dihedral


def zoom(x: torch.Tensor, z: float) -> torch.Tensor:
    """``x`` (N, C, H, W) zoomed by ``z`` about its centre: bilinear, reflection padding, as
    the training augmentation resamples."""
    if z == 1.0:
        return x
    theta = torch.zeros(x.shape[0], 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / z
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def views_at(zooms: tuple[float, ...]):
    """A replacement for ``classify._dihedral``: the 8 views at each zoom, in zoom order."""
    def views(x: torch.Tensor) -> list[torch.Tensor]:
        return [v for z in zooms for v in _dihedral(zoom(x, z))]
    return views


def proba_at(clf: Classifier, crops: np.ndarray, zooms: tuple[float, ...]) -> np.ndarray:
    classify_mod._dihedral = views_at(zooms)
    try:
        return clf.predict_proba(crops)
    finally:
        classify_mod._dihedral = _dihedral


def pbc_val_crops(size: int) -> tuple[np.ndarray, np.ndarray]:
    """PBC ``val`` cut as :func:`benchmarks.accuracy.pbc_test_crops` cuts ``test``."""
    from skimage import io

    from napari_ddrnet.crop import crop_centre
    from training.paths import data_root

    root = data_root() / "pbc"
    rows = [r for r in csv.DictReader(open(root / "splits.csv", newline=""))
            if r["split"] == "val"]
    crops = np.stack([crop_centre(io.imread(root / r["file"])[..., :3], size) for r in rows])
    return crops, np.asarray([r["class"] for r in rows])


def live_set(name: str, size: int) -> tuple[np.ndarray, np.ndarray, tuple | None] | None:
    """Crops, class names and the class subset scored (``None``: all) of a set cut live from
    the dataset images (``pbc_val``, ``pbc_test``, ``lisc``); ``None`` for any other name."""
    if name == "pbc_val":
        return (*pbc_val_crops(size), None)
    if name == "pbc_test":
        return (*pbc_test_crops(size), None)
    if name == "lisc":
        crops, y, _ = lisc_crops(224, size)
        return crops, y, LISC_CLASSES
    return None


def accuracy(probs: np.ndarray, names: np.ndarray, classes: tuple[str, ...],
             subset: tuple[str, ...] | None = None) -> float:
    idx = np.arange(len(classes)) if subset is None else np.asarray(
        [classes.index(c) for c in subset])
    pred = np.asarray(classes)[idx[probs[:, idx].argmax(1)]]
    return float((pred == names).mean())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--packs", type=Path, default=Path("packs96_38"))
    ap.add_argument("--sets", nargs="+", default=["pbc_val", "bccd_valfold", "pbc_test",
                                                  "bccd_fields", "lisc", "kaggle_test"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    clf = Classifier(args.weights, device="cpu")
    classes, size = clf.classes, clf.input_size
    print(f"scale TTA probe: {clf.bundle.name}, {size} px, zooms "
          f"{', '.join(f'{z:.4f}' for z in ZOOMS)}", flush=True)
    rows: dict[str, dict] = {}
    for name in args.sets:
        t0 = time.perf_counter()
        subset = None
        if name == "bccd_fields":
            base = shipped_on_bccd_fields(clf)
            classify_mod._dihedral = views_at(ZOOMS)
            try:
                scaled = shipped_on_bccd_fields(clf)
            finally:
                classify_mod._dihedral = _dihedral
            rows[name] = {"n": base["n"], "tta8": base["accuracy"], "tta24": scaled["accuracy"],
                          "confusions8": base["confusions"], "confusions24": scaled["confusions"]}
        else:
            live = live_set(name, size)
            if live is not None:
                crops, y, subset = live
            else:
                from training.packs import load_pack

                path = args.packs / f"{name}.npz"
                if not path.exists():
                    print(f"{name}: no pack at {path}, skipped", flush=True)
                    continue
                crops, labels, pack_classes, _ = load_pack(path)
                y = np.asarray(pack_classes)[labels]
                if name == "kaggle_test":
                    subset = tuple(sorted(set(y.tolist())))
            per_zoom = {z: proba_at(clf, crops, (z,)) for z in ZOOMS}
            p8, p24 = per_zoom[1.0], np.mean([per_zoom[z] for z in ZOOMS], 0)
            rows[name] = {"n": int(len(y)), "tta8": accuracy(p8, y, classes, subset),
                          "tta24": accuracy(p24, y, classes, subset),
                          **{f"zoom_{z:.3f}": accuracy(per_zoom[z], y, classes, subset)
                             for z in ZOOMS}}
            if subset is not None:
                rows[name]["classes_scored"] = list(subset)
        r = rows[name]
        print(f"{name:12s} n={r['n']:5d}  8-view {100 * r['tta8']:6.2f} %  24-view "
              f"{100 * r['tta24']:6.2f} %  ({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scale_tta_probe.json").write_text(json.dumps(
            {"weights": clf.bundle.name, "zooms": ZOOMS, "sets": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
