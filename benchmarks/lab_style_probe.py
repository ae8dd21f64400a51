"""Scores for the ninth session's palette experiment (``docs/cross-source.md``, "other labs'
palettes on labelled cells"): several models side by side on the labs its rule reads.

For each model (8-view TTA, as the plugin classifies), as is and with ``--new-lab``
(:meth:`napari_ddrnet.classify.Classifier.adapted_to_lab` on the lab's own crops):

- (a) PBC ``val`` with the cyan cast (R x 0.6), (b) with the yellow cast (B x 0.55), the casts
  of :mod:`benchmarks.domain_shift`; (c) the BCCD validation fold; (d) PBC ``val``;
- reported, deciding nothing: LISC (whole 224 px image, argmax over its 5 classes) and Kaggle
  ``TEST`` (argmax over its 4 classes; only where the pack folder holds ``kaggle_test.npz``).

Usage (from the project root)::

    PYTHONPATH=. python -m benchmarks.lab_style_probe NAME=WEIGHTS.safetensors [...]
        [--packs packs30] [--name lab_style_probe]

Writes ``benchmarks/results/<name>.{json,log}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_ddrnet.classify import Classifier  # noqa: E402
from training.packs import check_cut, load_pack  # noqa: E402

from .common import machine, write_json  # noqa: E402
from .cross_source import KAGGLE_CLASSES, LISC_CLASSES, lisc_crops, score  # noqa: E402
from .domain_shift import CASTS, cast  # noqa: E402

#: Labs only reported (restricted argmax); the rule's: :func:`rule_labs`.
REPORTED = {"lisc": LISC_CLASSES, "kaggle_test": KAGGLE_CLASSES}


def rule_labs(cast_set: str = "pbc_val") -> tuple[str, ...]:
    """The labs the rule reads when the casts are made on ``cast_set``."""
    return (f"a_{cast_set}_cyan", f"b_{cast_set}_yellow", "c_bccd_valfold", f"d_{cast_set}")


def labs(packs: Path, size: int, cast_set: str = "pbc_val") -> dict:
    """``name -> (crops, class names, restricted subset or None)`` for every lab scored; the
    casts are made on the ``cast_set`` pack (``pbc_test`` for a model trained on ``pbc_val``)."""
    def named(pack: Path):
        x, yi, cls, _ = load_pack(pack)
        return x, np.asarray([cls[i] for i in yi])

    val, y_val = named(packs / f"{cast_set}.npz")
    lisc, y_lisc, _ = lisc_crops(224, size)
    a, b, c, d = rule_labs(cast_set)
    out = {
        a: (cast(val, CASTS["pbc_test_cyan"]), y_val, None),
        b: (cast(val, CASTS["pbc_test_yellow"]), y_val, None),
        c: (*named(packs / "bccd_valfold.npz"), None),
        d: (val, y_val, None),
        "lisc": (lisc, y_lisc, LISC_CLASSES),
    }
    if (packs / "kaggle_test.npz").exists():  # reported only, so optional
        out["kaggle_test"] = (*named(packs / "kaggle_test.npz"), KAGGLE_CLASSES)
    return out


def percent(r: dict) -> float:
    """Accuracy in percent: the restricted argmax where the lab has one, else plain."""
    return 100 * r.get("accuracy_restricted", r["accuracy_plain"])


def main(argv: list[str] | None = None) -> dict:
    """Score every ``NAME=WEIGHTS`` model; write ``<name>.{json,log}``; return the payload."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", metavar="NAME=WEIGHTS")
    ap.add_argument("--packs", type=Path, default=ROOT / "packs30")
    ap.add_argument("--name", default="lab_style_probe")
    ap.add_argument("--cast-set", default="pbc_val", choices=["pbc_val", "pbc_test"],
                    help="PBC pack the casts are made on (pbc_test: a model trained on val)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / f"{args.name}.log"
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)
        log_path.write_text("\n".join(lines) + "\n")

    t0 = time.perf_counter()
    models = dict(m.split("=", 1) for m in args.models)
    data = None
    res: dict = {}
    for name, weights in models.items():
        clf = Classifier(weights, device="cpu")
        check_cut(args.packs, {"crop_fov_um": clf.crop_fov_um, "input_size": clf.input_size})
        data = data or labs(args.packs, clf.input_size, args.cast_set)
        res[name] = {"weights": weights}
        for lab, (crops, y, subset) in data.items():
            res[name][lab] = {
                "as_is": score(clf.predict_proba(crops), y, list(clf.classes), subset),
                "new_lab": score(clf.adapted_to_lab(crops).predict_proba(crops), y,
                                 list(clf.classes), subset)}
        log(f"{name}: scored ({time.perf_counter() - t0:.0f} s)")
    log("")
    log("accuracy, %, 8-view TTA, as is / --new-lab (LISC 5-class, Kaggle 4-class argmax)")
    cols = list(data)
    log(f"{'model':14s} " + " ".join(f"{c:>17s}" for c in cols) + f" {'mean(a,b)':>10s}")
    for name, r in res.items():
        cells = [f"{percent(r[c]['as_is']):7.2f} / {percent(r[c]['new_lab']):6.2f}"
                 for c in cols]
        ab = np.mean([percent(r[c]["as_is"]) for c in rule_labs(args.cast_set)[:2]])
        r["mean_ab_as_is"] = float(ab)
        log(f"{name:14s} " + " ".join(f"{c:>17s}" for c in cells) + f" {ab:10.2f}")
    log("")
    log("LISC per-class recall as is (5-class argmax), %:")
    log(f"{'':14s} " + " ".join(f"{c:>10s}" for c in LISC_CLASSES))
    for name, r in res.items():
        rec = r["lisc"]["as_is"]["recall"]
        log(f"{name:14s} " + " ".join(f"{100 * rec.get(c, 0):10.1f}" for c in LISC_CLASSES))
    log(f"total wall time {time.perf_counter() - t0:.0f} s")
    payload = {"machine": machine(), "results": res, "wall_s": time.perf_counter() - t0}
    write_json(args.out / f"{args.name}.json", payload)
    return payload


if __name__ == "__main__":
    main()
