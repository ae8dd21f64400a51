"""Fix and check an "unlike the training data" warning (``benchmarks.feature_shift``; tried,
not wired into the plugin: ``docs/cross-source.md``).

The rule (``docs/cross-source.md``, written before any score was computed): the threshold is
1.2 x the highest :func:`feature_shift` of 200 random 32-crop draws (and of the whole pack)
from each calibration pack, the selection sets ``pbc_val`` and ``bccd_valfold``. Reported for
each other set: the share of 200 32-crop draws above it and the whole-set score. In-domain
sets (PBC test, BCCD test, Kaggle TEST) should not warn; PBC test with a strong colour cast
and LISC (a lab never trained on) should. LISC tunes nothing.

Usage::

    python -m benchmarks.domain_shift [--weights W.safetensors] [--packs packs30]

Writes ``benchmarks/results/domain_shift_<weights>.{json,log}``.
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

from napari_ddrnet.preprocess import crops_to_tensor  # noqa: E402
from napari_ddrnet.weights import DEFAULT_WEIGHTS, load_bundle  # noqa: E402
from training.packs import load_pack  # noqa: E402

from .common import machine, write_json  # noqa: E402
from .feature_shift import SHIFT_MIN_CROPS, feature_shift  # noqa: E402

CALIBRATION = ("pbc_val", "bccd_valfold")
REPORT = ("pbc_test", "bccd_test", "kaggle_test", "pbc_test_cyan", "pbc_test_yellow", "lisc")
IN_DOMAIN = ("pbc_test", "bccd_test", "kaggle_test")
SHIFTED = ("pbc_test_cyan", "pbc_test_yellow")
#: The synthetic casts of the rule: cyan (R x 0.6) and yellow (B x 0.55).
CASTS = {"pbc_test_cyan": (0.6, 1.0, 1.0), "pbc_test_yellow": (1.0, 1.0, 0.55)}
MARGIN = 1.2
DRAWS = 200


def cast(crops: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    """Per-channel gains on uint8 RGB crops (a colour cast of the whole image)."""
    return np.clip(crops.astype(np.float32) * np.asarray(gains, np.float32), 0, 255
                   ).round().astype(np.uint8)


def draw_scores(model, x: torch.Tensor, draws: int, n: int, seed: int) -> np.ndarray:
    """:func:`feature_shift` of ``draws`` random ``n``-crop subsets of ``x``."""
    rng = np.random.default_rng(seed)
    return np.asarray([feature_shift(model, x[rng.choice(len(x), n, replace=False)])
                       for _ in range(draws)])


def load_sets(packs: Path, names) -> dict[str, np.ndarray]:
    """uint8 crops of every named set (packs, casts of PBC test, LISC)."""
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name in CASTS:
            base = out.get("pbc_test")
            if base is None:
                base = load_pack(packs / "pbc_test.npz")[0]
            out[name] = cast(base, CASTS[name])
        elif name == "lisc":
            from .cross_source import lisc_crops

            # The whole 224 px image, as `count --single-cell` reads a LISC crop.
            out[name] = lisc_crops(224)[0]
        else:
            out[name] = load_pack(packs / f"{name}.npz")[0]
    return out


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
    bundle = load_bundle(args.weights)
    model = bundle.model.eval()
    name = Path(args.weights).stem
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    sets = load_sets(args.packs, CALIBRATION + REPORT)
    xs = {k: crops_to_tensor(v, "cpu", bundle.mean, bundle.std) for k, v in sets.items()}
    n = SHIFT_MIN_CROPS
    res: dict[str, dict] = {}
    for i, key in enumerate(CALIBRATION + REPORT):
        draws = draw_scores(model, xs[key], args.draws, n, seed=i)
        res[key] = {"n": len(xs[key]), "whole": feature_shift(model, xs[key]),
                    "draws_min": float(draws.min()), "draws_median": float(np.median(draws)),
                    "draws_max": float(draws.max()), "_draws": draws}
    calib_max = max(max(res[k]["draws_max"], res[k]["whole"]) for k in CALIBRATION)
    threshold = MARGIN * calib_max
    log(f"weights {name}; {args.draws} draws of {n} crops per set; threshold = {MARGIN} x "
        f"{calib_max:.4f} (highest calibration score) = {threshold:.4f}")
    log(f"{'set':<18}{'crops':>7}{'whole':>8}{'min':>8}{'median':>8}{'max':>8}{'warn %':>8}")
    for key in CALIBRATION + REPORT:
        r = res[key]
        r["warn_share"] = float((r.pop("_draws") > threshold).mean())
        r["whole_warns"] = bool(r["whole"] > threshold)
        log(f"{key:<18}{r['n']:>7}{r['whole']:>8.3f}{r['draws_min']:>8.3f}"
            f"{r['draws_median']:>8.3f}{r['draws_max']:>8.3f}{100 * r['warn_share']:>7.1f}%")
    ships = (all(res[k]["warn_share"] <= 0.05 for k in IN_DOMAIN)
             and all(res[k]["warn_share"] >= 0.95 for k in SHIFTED))
    log(f"rule: in-domain false alarms <= 5 % and casts >= 95 %: {'met' if ships else 'NOT met'}"
        f"; LISC (unseen, reported only) warns on {100 * res['lisc']['warn_share']:.1f} % of "
        f"draws ({time.time() - t0:.0f} s)")
    payload = {"weights": name, "threshold": threshold, "margin": MARGIN,
               "calibration": list(CALIBRATION), "min_crops": n, "draws": args.draws,
               "rule_met": ships, "sets": res, "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"domain_shift_{name}.json", payload)
    (args.out / f"domain_shift_{name}.log").write_text("\n".join(lines) + "\n")
    return payload


if __name__ == "__main__":
    main()
