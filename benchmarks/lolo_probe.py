"""Leave-BCCD-out students: BCCD as an unseen lab, with and without MixStyle.

The comparison pre-registered in ``docs/cross-source.md`` ("BCCD as an unseen lab to select
on, and MixStyle"): students trained without any BCCD image (``training/configs/
lolo_bccd_{base,mixstyle}.json``, ``docs/results/lolo_bccd_mixstyle/run.sh``) are scored with
8-view TTA, 8-class argmax, on every crop of the ``bccd_train`` and ``bccd_test`` packs (their
unseen lab) and on PBC ``val``; LISC (5-class argmax, the whole 224 px image as the shipped
figures) is reported beside and decides nothing. The starting model (``pbc8_only_ddrnet``) and
the shipped ``ddrnet_wbc8_v5`` (which trained on BCCD) are scored for reference, and the
students before their BatchNorm re-estimation are reported beside (they decide nothing).

Usage (from the project root)::

    python -m benchmarks.lolo_probe [--packs packs30] [--runs runs]
        [--candidate mixstyle] [--tag lolo_probe]

``--candidate`` names the arm compared with ``base`` (``mixstyle``: after the stem and the
DRDB; ``mixstyle_stem``: the stem only). Writes ``benchmarks/results/<tag>.{json,log}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_ddrnet.model import fuse_for_inference  # noqa: E402
from napari_ddrnet.weights import DEFAULT_WEIGHTS  # noqa: E402
from training.packs import load_pack  # noqa: E402

from .common import machine, write_json  # noqa: E402
from .cross_source import LISC_CLASSES, lisc_crops, load_model, predict, score  # noqa: E402

SEEDS = (0, 1)


def _pack(packs: Path, *names: str) -> tuple[np.ndarray, np.ndarray]:
    """Crops and class names of the named packs, concatenated."""
    xs, ys = [], []
    for name in names:
        x, y, classes, _ = load_pack(packs / f"{name}.npz")
        xs.append(x)
        ys.append(np.asarray(classes)[y])
    return np.concatenate(xs), np.concatenate(ys)


def evaluate(weights: Path, sets: dict) -> dict:
    """TTA scores of one model on every set (``{name: (crops, names, subset)}``)."""
    m = load_model(weights)
    model = fuse_for_inference(m.model).eval()
    out = {}
    for name, (crops, names, subset) in sets.items():
        probs = predict(model, crops, m.mean, m.std, tta=True)
        out[name] = score(probs, names, m.classes, subset)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packs", type=Path, default=Path("packs30"))
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--candidate", default="mixstyle", help="arm compared with base")
    ap.add_argument("--tag", default="lolo_probe", help="results file name")
    args = ap.parse_args(argv)
    arms = ("base", args.candidate)
    torch.set_num_threads(2)
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    bccd = _pack(args.packs, "bccd_train", "bccd_test")
    pbc_val = _pack(args.packs, "pbc_val")
    lisc, y_lisc, _ = lisc_crops(224)
    sets = {"bccd_all": (*bccd, None), "pbc_val": (*pbc_val, None),
            "lisc": (lisc, y_lisc, LISC_CLASSES)}
    models = {"pbc8_only_ddrnet (start)": args.runs / "pbc8_only_ddrnet",
              "ddrnet_wbc8_v5 (saw BCCD)": DEFAULT_WEIGHTS}
    for arm in arms:
        for seed in SEEDS:
            models[f"{arm} s{seed}"] = args.runs / f"lolo_bccd_{arm}_s{seed}_recal"
    # Reported, deciding nothing: the same students before the BatchNorm re-estimation.
    for arm in arms:
        for seed in SEEDS:
            models[f"{arm} s{seed} before recal"] = args.runs / f"lolo_bccd_{arm}_s{seed}"
    results = {}
    log(f"leave-BCCD-out probe; TTA (8 views); BCCD = bccd_train + bccd_test packs "
        f"({len(bccd[0])} crops), PBC val {len(pbc_val[0])}, LISC {len(lisc)}")
    log(f"{'model':33s} {'BCCD':>7s} {'PBC val':>8s} {'LISC 5':>7s} {'LISC 8':>7s}")
    for name, weights in models.items():
        r = evaluate(weights, sets)
        results[name] = r
        log(f"{name:33s} {100 * r['bccd_all']['accuracy_plain']:7.2f} "
            f"{100 * r['pbc_val']['accuracy_plain']:8.2f} "
            f"{100 * r['lisc']['accuracy_restricted']:7.2f} "
            f"{100 * r['lisc']['accuracy_plain']:7.2f}")

    def arm_mean(arm: str, key: str, field: str = "accuracy_plain") -> float:
        return float(np.mean([results[f"{arm} s{s}"][key][field] for s in SEEDS]))

    cand = args.candidate
    gain = 100 * (arm_mean(cand, "bccd_all") - arm_mean("base", "bccd_all"))
    pbc_drop = 100 * (arm_mean("base", "pbc_val") - arm_mean(cand, "pbc_val"))
    lisc_gain = 100 * (arm_mean(cand, "lisc", "accuracy_restricted")
                       - arm_mean("base", "lisc", "accuracy_restricted"))
    met = gain >= 1.0 and pbc_drop <= 0.5
    log(f"{cand} - base, mean of two seeds: BCCD {gain:+.2f} points (need >= +1.0), "
        f"PBC val {-pbc_drop:+.2f} (need >= -0.5); LISC 5-class {lisc_gain:+.2f} (reported)")
    log(f"rule: {f'met: {cand} recommended' if met else 'NOT met'}")
    students = [f"{a} s{s}" for a in arms for s in SEEDS]
    by_bccd = sorted(students, key=lambda k: -results[k]["bccd_all"]["accuracy_plain"])
    by_lisc = sorted(students, key=lambda k: -results[k]["lisc"]["accuracy_restricted"])
    log(f"students by BCCD: {by_bccd}")
    log(f"students by LISC: {by_lisc}")
    from scipy.stats import spearmanr

    rho = spearmanr([results[k]["bccd_all"]["accuracy_plain"] for k in students],
                    [results[k]["lisc"]["accuracy_restricted"] for k in students]).statistic
    log(f"Spearman rank correlation BCCD vs LISC over the four students: {rho:+.2f}")
    before = [f"{k} before recal" for k in students]
    rho_before = spearmanr([results[k]["bccd_all"]["accuracy_plain"] for k in before],
                           [results[k]["lisc"]["accuracy_restricted"] for k in before]).statistic
    log(f"the same before the BatchNorm re-estimation (reported): {rho_before:+.2f}")
    for name in models:
        pred = results[name]["bccd_all"]["predicted_counts"]
        log(f"BCCD calls {name:33s} " + " ".join(f"{c[:5]} {n}" for c, n in pred.items()))
    for name in models:
        rec = results[name]["lisc"]["recall"]
        log(f"LISC recall {name:33s} " + " ".join(f"{c[:4]} {100 * v:5.1f}"
                                                    for c, v in rec.items()))
    payload = {"machine": machine(), "results": results, "candidate": cand,
               "candidate_minus_base": {
        "bccd_points": gain, "pbc_val_points": -pbc_drop, "lisc5_points": lisc_gain},
        "rule_met": met, "spearman_bccd_lisc": float(rho),
        "spearman_bccd_lisc_before_recal": float(rho_before)}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.tag}.json", payload)
    (args.out / f"{args.tag}.log").write_text("\n".join(lines) + "\n")
    return payload


if __name__ == "__main__":
    main()
