"""The per-lab stem score over specimen pixels only (thirteenth session's third look).

A probe, not wired into the plugin: scores ``stem.norm``'s input means against each labelled
training lab's own statistics (``pbc_train``, ``bccd_trainfold``; the nearest lab counts), with
every stem position whose 4 x 4 input window touches a not-specimen pixel (black fill, a
camera's black border: :func:`napari_ddrnet.specimen.not_specimen` with the crop's per-channel
99th percentile as its white) left out. Threshold and clauses as ``benchmarks.domain_shift``
(``docs/cross-source.md``); the five mild shifts' share is reported against the shipped
score's 26.8 %. LISC is reported only.

Usage::

    python -m benchmarks.masked_shift_probe [--weights W] [--packs packs96_38] [--draws 200]

Writes ``benchmarks/results/masked_shift_probe_<weights>.{json,log}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_ddrnet.preprocess import crops_to_tensor  # noqa: E402
from napari_ddrnet.shift_score import shift_from_means  # noqa: E402
from napari_ddrnet.specimen import not_specimen  # noqa: E402
from napari_ddrnet.weights import DEFAULT_WEIGHTS, load_bundle  # noqa: E402
from training.packs import check_cut, load_pack  # noqa: E402

from .common import machine, write_json  # noqa: E402
from .domain_shift import (  # noqa: E402
    CALIBRATION,
    DRAWS,
    IN_DOMAIN,
    MARGIN,
    MILD_FIVE,
    REFERENCE_LABS,
    REPORT,
    SHIFT_MIN_CROPS,
    SHIFTED,
    load_sets,
)

#: The shipped score's five-shift share (domain_shift_ddrnet_wbc8_v7_layers_spread.log).
SHIPPED_FIVE_SHARE = 0.268
STRIDE = 4  # stem: conv stride 2, then a 2 x 2 max-pool


def specimen_mask(crops: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` bool, True where a pixel is specimen (not black fill or border)."""
    out = np.ones(crops.shape[:3], bool)
    for i, c in enumerate(crops):
        white = np.percentile(c.reshape(-1, 3), 99, axis=0)
        bad = not_specimen(c, white)
        if bad is not None:
            out[i] = ~bad
    return out


@torch.no_grad()
def stem_sums(model, x: torch.Tensor, keep: np.ndarray, batch: int = 256):
    """Per crop: the sum of ``stem.norm``'s input over its kept positions, their mean squares'
    sum, and the kept count (``(N, C)``, ``(N, C)``, ``(N,)``, float64)."""
    got = []
    hook = model.stem.norm.register_forward_hook(lambda _m, inp, _o: got.append(inp[0].double()))
    sums, sq, n = [], [], []
    try:
        for i in range(0, len(x), batch):
            got.clear()
            model(x[i:i + batch])
            v = got[0]
            bad = torch.as_tensor(~keep[i:i + batch], dtype=torch.float32)[:, None]
            k = (F.max_pool2d(bad, STRIDE)[:, 0] == 0).double()  # (B, h, w)
            if k.shape[-2:] != v.shape[-2:]:
                raise SystemExit(f"mask {tuple(k.shape)} and stem input {tuple(v.shape)} differ")
            sums.append((v * k[:, None]).sum((2, 3)))
            sq.append((v * v * k[:, None]).sum((2, 3)))
            n.append(k.sum((1, 2)))
    finally:
        hook.remove()
    return torch.cat(sums), torch.cat(sq), torch.cat(n)


def score(s: torch.Tensor, n: torch.Tensor, refs) -> float:
    """The shift score (:func:`shift_from_means`, nearest lab) of the masked stem means."""
    return shift_from_means([s.sum(0) / n.sum().clamp_min(1)], [[r] for r in refs])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    ap.add_argument("--packs", type=Path, default=ROOT / "packs96_38")
    ap.add_argument("--draws", type=int, default=DRAWS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    bundle = load_bundle(args.weights)
    check_cut(args.packs, {"crop_fov_um": bundle.crop_fov_um, "input_size": bundle.input_size})
    model = bundle.model.eval()
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    def sums_of(crops: np.ndarray):
        keep = specimen_mask(crops)
        x = crops_to_tensor(crops, "cpu", bundle.mean, bundle.std)
        return stem_sums(model, x, keep), float(1 - keep.mean())

    refs = []
    for lab in REFERENCE_LABS:
        (s, q, n), _ = sums_of(load_pack(args.packs / f"{lab}.npz")[0])
        mu = s.sum(0) / n.sum()
        refs.append((mu, (q.sum(0) / n.sum() - mu * mu).clamp_min(0)))
    sets = load_sets(args.packs, CALIBRATION + REPORT, bundle.input_size)
    res: dict[str, dict] = {}
    draws: dict[str, np.ndarray] = {}
    for i, key in enumerate(CALIBRATION + REPORT):
        (s, _q, n), masked = sums_of(sets[key])
        rng = np.random.default_rng(i)  # the seeds of benchmarks.domain_shift
        d = []
        for _ in range(args.draws):
            idx = torch.as_tensor(rng.choice(len(s), SHIFT_MIN_CROPS, replace=False))
            d.append(score(s[idx], n[idx], refs))
        draws[key] = np.asarray(d)
        res[key] = {"n": len(s), "masked_pixels": masked, "whole": score(s, n, refs),
                    "draws_median": float(np.median(d)), "draws_max": float(np.max(d))}
    top = max(max(res[k]["draws_max"], res[k]["whole"]) for k in CALIBRATION)
    threshold = MARGIN * top
    log(f"weights {args.weights.stem}; per-lab reference ({', '.join(REFERENCE_LABS)}), "
        f"stem.norm, means over specimen pixels; {args.draws} draws of {SHIFT_MIN_CROPS} crops; "
        f"threshold = {MARGIN} x {top:.4f} = {threshold:.4f}")
    log(f"{'set':<22}{'crops':>7}{'masked %':>10}{'whole':>8}{'median':>8}{'max':>8}{'warn %':>8}")
    for key in CALIBRATION + REPORT:
        r = res[key]
        r["warn_share"] = float((draws[key] > threshold).mean())
        r["whole_warns"] = bool(r["whole"] > threshold)
        log(f"{key:<22}{r['n']:>7}{100 * r['masked_pixels']:>9.2f}%{r['whole']:>8.3f}"
            f"{r['draws_median']:>8.3f}{r['draws_max']:>8.3f}{100 * r['warn_share']:>7.1f}%")
    met = (all(res[k]["warn_share"] <= 0.05 for k in IN_DOMAIN)
           and all(res[k]["warn_share"] >= 0.95 for k in SHIFTED))
    five = float(np.mean([res[k]["warn_share"] for k in MILD_FIVE]))
    worth = met and five > SHIPPED_FIVE_SHARE
    log(f"clauses (in-domain <= 5 %, strong casts >= 95 %): {'met' if met else 'NOT met'}; "
        f"five mild shifts {100 * five:.1f} % (shipped {100 * SHIPPED_FIVE_SHARE:.1f} %): "
        f"{'worth wiring in' if worth else 'not worth wiring in'}; LISC (reported only) "
        f"{100 * res['lisc']['warn_share']:.1f} % of draws, whole run "
        f"{'warns' if res['lisc']['whole_warns'] else 'does not warn'} "
        f"({time.time() - t0:.0f} s)")
    payload = {"weights": args.weights.stem, "threshold": threshold, "rule_met": met,
               "mild_warn_share": five, "worth_wiring_in": worth, "sets": res,
               "draws": args.draws, "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"masked_shift_probe_{args.weights.stem}.json", payload)
    (args.out / f"masked_shift_probe_{args.weights.stem}.log").write_text("\n".join(lines) + "\n")
    return payload


if __name__ == "__main__":
    main()
