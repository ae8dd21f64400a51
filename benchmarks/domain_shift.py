"""Fix and check an "unlike the training data" warning (:mod:`napari_ddrnet.shift_score`).

The rule (``docs/cross-source.md``, written before any score was computed): the threshold is
1.2 x the highest score of 200 random 32-crop draws (and of the whole pack) from each
calibration pack, the selection sets ``pbc_val`` and ``bccd_valfold``. Reported for each other
set: the share of 200 32-crop draws above it and the whole-set score. In-domain sets (PBC test,
BCCD test, Kaggle TEST) should not warn; PBC test with a colour cast and LISC (a lab never
trained on) should. LISC tunes nothing.

``--reference running`` scores against the model's running statistics (fifth session);
``--reference per-lab`` against the statistics of each labelled training lab's own crops
(``pbc_train``, ``bccd_trainfold``), the nearest lab counting (sixth session).

Usage::

    python -m benchmarks.domain_shift [--weights W.safetensors] [--packs packs30]
        [--reference running|per-lab]

Writes ``benchmarks/results/domain_shift_<weights>[_per-lab].{json,log}``.
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
from napari_ddrnet.shift_score import (  # noqa: E402
    SHIFT_MIN_CROPS,
    bn_input_moments,
    lab_stats,
    running_stats,
    shift_from_means,
)
from napari_ddrnet.weights import DEFAULT_WEIGHTS, load_bundle  # noqa: E402
from training.packs import check_cut, load_pack  # noqa: E402

from .common import machine, write_json  # noqa: E402

CALIBRATION = ("pbc_val", "bccd_valfold")
# The mild casts come last so every earlier set keeps its draws (seed = its position).
REPORT = ("pbc_test", "bccd_test", "kaggle_test", "pbc_test_cyan", "pbc_test_yellow", "lisc",
          "pbc_test_cyan_mild", "pbc_test_yellow_mild")
IN_DOMAIN = ("pbc_test", "bccd_test", "kaggle_test")
SHIFTED = ("pbc_test_cyan", "pbc_test_yellow")
MILD = ("pbc_test_cyan_mild", "pbc_test_yellow_mild")
#: The synthetic casts: strong cyan (R x 0.6) and yellow (B x 0.55) decide the rule; the mild
#: ones (R x 0.8, B x 0.75) compare the two references' sensitivity.
CASTS = {"pbc_test_cyan": (0.6, 1.0, 1.0), "pbc_test_yellow": (1.0, 1.0, 0.55),
         "pbc_test_cyan_mild": (0.8, 1.0, 1.0), "pbc_test_yellow_mild": (1.0, 1.0, 0.75)}
#: The labelled training labs whose own statistics are the per-lab references.
REFERENCE_LABS = ("pbc_train", "bccd_trainfold")
MARGIN = 1.2
DRAWS = 200


def cast(crops: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    """Per-channel gains on uint8 RGB crops (a colour cast of the whole image)."""
    return np.clip(crops.astype(np.float32) * np.asarray(gains, np.float32), 0, 255
                   ).round().astype(np.uint8)


def draw_scores(means: list[torch.Tensor], refs, draws: int, n: int, seed: int) -> np.ndarray:
    """Scores of ``draws`` random ``n``-crop subsets, from per-crop layer means."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        idx = torch.as_tensor(rng.choice(len(means[0]), n, replace=False))
        out.append(shift_from_means([m[idx].mean(0) for m in means], refs))
    return np.asarray(out)


def load_sets(packs: Path, names, size: int) -> dict[str, np.ndarray]:
    """uint8 crops of every named set (packs, casts of PBC test, LISC at ``size`` px)."""
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
            out[name] = lisc_crops(224, size)[0]
        else:
            out[name] = load_pack(packs / f"{name}.npz")[0]
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    ap.add_argument("--packs", type=Path, default=ROOT / "packs30")
    ap.add_argument("--draws", type=int, default=DRAWS)
    ap.add_argument("--reference", choices=("running", "per-lab"), default="running")
    ap.add_argument("--write-card", action="store_true",
                    help="write the threshold into the weights card's shift_warning entry "
                         "(only a running-statistics score that meets the rule: what the "
                         "plugin can check)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    bundle = load_bundle(args.weights)
    check_cut(args.packs, {"crop_fov_um": bundle.crop_fov_um, "input_size": bundle.input_size})
    model = bundle.model.eval()
    name = Path(args.weights).stem
    tag = name if args.reference == "running" else f"{name}_{args.reference}"
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    def tensor(crops: np.ndarray) -> torch.Tensor:
        return crops_to_tensor(crops, "cpu", bundle.mean, bundle.std)

    if args.reference == "running":
        refs = [running_stats(model)]
    else:
        refs = [lab_stats(model, tensor(load_pack(args.packs / f"{lab}.npz")[0]))
                for lab in REFERENCE_LABS]
    sets = load_sets(args.packs, CALIBRATION + REPORT, bundle.input_size)
    n = SHIFT_MIN_CROPS
    res: dict[str, dict] = {}
    for i, key in enumerate(CALIBRATION + REPORT):
        means, _ = bn_input_moments(model, tensor(sets[key]))
        draws = draw_scores(means, refs, args.draws, n, seed=i)
        res[key] = {"n": len(means[0]),
                    "whole": shift_from_means([m.mean(0) for m in means], refs),
                    "draws_min": float(draws.min()), "draws_median": float(np.median(draws)),
                    "draws_max": float(draws.max()), "_draws": draws}
    calib_max = max(max(res[k]["draws_max"], res[k]["whole"]) for k in CALIBRATION)
    threshold = MARGIN * calib_max
    log(f"weights {name}; reference {args.reference}; {args.draws} draws of {n} crops per set; "
        f"threshold = {MARGIN} x {calib_max:.4f} (highest calibration score) = {threshold:.4f}")
    log(f"{'set':<18}{'crops':>7}{'whole':>8}{'min':>8}{'median':>8}{'max':>8}{'warn %':>8}")
    for key in CALIBRATION + REPORT:
        r = res[key]
        r["warn_share"] = float((r.pop("_draws") > threshold).mean())
        r["whole_warns"] = bool(r["whole"] > threshold)
        log(f"{key:<18}{r['n']:>7}{r['whole']:>8.3f}{r['draws_min']:>8.3f}"
            f"{r['draws_median']:>8.3f}{r['draws_max']:>8.3f}{100 * r['warn_share']:>7.1f}%")
    ships = (all(res[k]["warn_share"] <= 0.05 for k in IN_DOMAIN)
             and all(res[k]["warn_share"] >= 0.95 for k in SHIFTED))
    mild = float(np.mean([res[k]["warn_share"] for k in MILD]))
    log(f"rule: in-domain false alarms <= 5 % and strong casts >= 95 %: "
        f"{'met' if ships else 'NOT met'}; mild casts warn on {100 * mild:.1f} % of draws "
        f"(mean of the two); LISC (unseen, reported only) warns on "
        f"{100 * res['lisc']['warn_share']:.1f} % of draws ({time.time() - t0:.0f} s)")
    payload = {"weights": name, "reference": args.reference, "threshold": threshold,
               "margin": MARGIN, "calibration": list(CALIBRATION),
               "reference_labs": list(REFERENCE_LABS) if args.reference == "per-lab" else [],
               "min_crops": n, "draws": args.draws, "rule_met": ships,
               "mild_warn_share": mild, "sets": res, "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"domain_shift_{tag}.json", payload)
    (args.out / f"domain_shift_{tag}.log").write_text("\n".join(lines) + "\n")
    if args.write_card:
        if not ships or args.reference != "running":
            raise SystemExit("--write-card: only a running-statistics score that meets the rule "
                             "goes into the card")
        write_card(args.weights, payload, args.packs)
    return payload


def write_card(weights: Path, payload: dict, packs: Path) -> None:
    """Put the threshold the plugin checks runs against into the weights card, with the command
    that reproduces it (the weights and packs named as given)."""
    from training.export import update_card

    command = (f"python -m benchmarks.domain_shift --weights {weights} --packs {packs} "
               "--reference running --write-card")

    update_card(weights, "shift_warning", {
        "reference": "running", "threshold": payload["threshold"],
        "min_crops": payload["min_crops"], "calibration": payload["calibration"],
        "margin": payload["margin"],
        "rule": "docs/cross-source.md, 2026-12-06 (fifth and sixth sessions)",
        "benchmark": f"{command} (benchmarks/results/domain_shift_{payload['weights']}.json)"})


if __name__ == "__main__":
    main()
