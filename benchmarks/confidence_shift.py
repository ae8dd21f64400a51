"""Check a confidence-based second signal for the "unlike the training data" warning.

The rule (``docs/cross-source.md``, eighth session, written before any share was computed):
the signal is the share of a run's cells whose top probability (8-view TTA, all classes) is
below 0.5. Its threshold is 1.2 x the highest share of 200 random 32-cell draws (and of the
whole packs) from the calibration packs ``pbc_val`` and ``bccd_valfold``. The combined warning
(the shipped BatchNorm score **or** this share above its threshold, judged on the same draws)
ships only if it warns on <= 5 % of draws of PBC test, BCCD test and Kaggle TEST each, and on
>= 95 % of the strong casts. The mild casts and LISC (the unseen lab) are reported only.

Usage::

    python -m benchmarks.confidence_shift [--weights W.safetensors] [--packs packs30]

Writes ``benchmarks/results/confidence_shift_<weights>.{json,log}``.
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
from napari_ddrnet.preprocess import crops_to_tensor  # noqa: E402
from napari_ddrnet.shift_score import (  # noqa: E402
    SHIFT_MIN_CROPS,
    bn_input_moments,
    card_references,
    select_layers,
    shift_from_means,
)
from napari_ddrnet.weights import DEFAULT_WEIGHTS  # noqa: E402
from training.packs import check_cut  # noqa: E402

from .common import machine, write_json  # noqa: E402
from .domain_shift import (  # noqa: E402
    CALIBRATION,
    DRAWS,
    IN_DOMAIN,
    MARGIN,
    MILD,
    REPORT,
    SHIFTED,
    load_sets,
)

#: A cell is "unsure" below this top probability (the plugin's default minimum confidence).
UNSURE_BELOW = 0.5


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    ap.add_argument("--packs", type=Path, default=ROOT / "packs30")
    ap.add_argument("--draws", type=int, default=DRAWS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    clf = Classifier(args.weights, device="cpu", batch_size=256, tta=True)
    bundle = clf.bundle
    check_cut(args.packs, {"crop_fov_um": bundle.crop_fov_um, "input_size": bundle.input_size})
    model = bundle.model.eval()
    bn_threshold = float(bundle.meta["shift_warning"]["threshold"])
    # The shipped score covers the layers its card names (all when it names none), against
    # the card's reference: the running statistics, or each labelled lab's own (per-lab cards,
    # since the fourteenth session; before this was read from the card, a per-lab card was
    # scored against the running statistics and warned on every set).
    keep = select_layers(model, bundle.meta["shift_warning"].get("layers"))
    refs = card_references(bundle.meta["shift_warning"], model, keep)
    name = Path(args.weights).stem
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    sets = load_sets(args.packs, CALIBRATION + REPORT, bundle.input_size)
    n = SHIFT_MIN_CROPS
    per_set: dict[str, dict] = {}
    for i, key in enumerate(CALIBRATION + REPORT):
        crops = sets[key]
        unsure = clf.predict_proba(crops).max(1) < UNSURE_BELOW
        means, _ = bn_input_moments(model, crops_to_tensor(crops, "cpu", bundle.mean,
                                                           bundle.std))
        means = [means[j] for j in keep]
        rng = np.random.default_rng(1000 + i)
        share, bn = [], []
        for _ in range(args.draws):
            idx = rng.choice(len(crops), n, replace=False)
            share.append(unsure[idx].mean())
            t = torch.as_tensor(idx)
            bn.append(shift_from_means([m[t].mean(0) for m in means], refs))
        per_set[key] = {"n": len(crops), "whole_share": float(unsure.mean()),
                        "whole_bn": shift_from_means([m.mean(0) for m in means], refs),
                        "_share": np.asarray(share), "_bn": np.asarray(bn)}
    calib_max = max(max(per_set[k]["_share"].max(), per_set[k]["whole_share"])
                    for k in CALIBRATION)
    threshold = MARGIN * float(calib_max)
    log(f"weights {name}; {args.draws} draws of {n} cells per set (same draws for both "
        f"signals); unsure = top probability < {UNSURE_BELOW} (8-view TTA)")
    log(f"share threshold = {MARGIN} x {calib_max:.4f} (highest calibration share) = "
        f"{threshold:.4f}; BatchNorm score threshold (shipped) = {bn_threshold:.4f}")
    log(f"{'set':<22}{'cells':>6}{'unsure %':>9}{'share warn %':>13}{'BN warn %':>10}"
        f"{'either %':>9}")
    for key in CALIBRATION + REPORT:
        r = per_set[key]
        by_share = r.pop("_share") > threshold
        by_bn = r.pop("_bn") > bn_threshold
        r.update(share_warn=float(by_share.mean()), bn_warn=float(by_bn.mean()),
                 either_warn=float((by_share | by_bn).mean()),
                 whole_share_warns=bool(r["whole_share"] > threshold),
                 whole_either_warns=bool(r["whole_share"] > threshold
                                         or r["whole_bn"] > bn_threshold))
        log(f"{key:<22}{r['n']:>6}{100 * r['whole_share']:>8.1f}%{100 * r['share_warn']:>12.1f}%"
            f"{100 * r['bn_warn']:>9.1f}%{100 * r['either_warn']:>8.1f}%")
    ships = (all(per_set[k]["either_warn"] <= 0.05 for k in IN_DOMAIN)
             and all(per_set[k]["either_warn"] >= 0.95 for k in SHIFTED))
    mild = float(np.mean([per_set[k]["either_warn"] for k in MILD]))
    lisc = per_set["lisc"]
    log(f"rule: combined in-domain false alarms <= 5 % and strong casts >= 95 %: "
        f"{'met' if ships else 'NOT met'}; mild casts warn on {100 * mild:.1f} % of draws "
        f"(mean of the two); LISC (unseen, reported only): {100 * lisc['either_warn']:.1f} % "
        f"of draws, whole set {'warns' if lisc['whole_either_warns'] else 'silent'} "
        f"({time.time() - t0:.0f} s)")
    payload = {"weights": name, "unsure_below": UNSURE_BELOW, "threshold": threshold,
               "bn_threshold": bn_threshold, "margin": MARGIN,
               "calibration": list(CALIBRATION), "min_cells": n, "draws": args.draws,
               "rule_met": ships, "mild_either_warn": mild, "sets": per_set,
               "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"confidence_shift_{name}.json", payload)
    (args.out / f"confidence_shift_{name}.log").write_text("\n".join(lines) + "\n")
    return payload


if __name__ == "__main__":
    main()
