"""TENT probe: entropy minimisation of the BatchNorm affine parameters on top of ``--new-lab``.

The experiment pre-registered in ``docs/cross-source.md``, section "2026-12-06 (seventh
session): entropy minimisation in "new lab" mode", run exactly as written there, one fixed
setting and no sweep:

- **Baseline (``--new-lab``)**: :meth:`napari_ddrnet.classify.Classifier.adapted_to_lab` on the
  run's crops (the run's LAB statistics, Reinhard transfer to PBC's colours, AdaBN of every
  BatchNorm layer on the mapped crops), scored with 8-view TTA.
- **TENT** (Wang et al., ICLR 2021): a deep copy of the same unfused AdaBN model, in eval mode
  (the AdaBN running statistics stay fixed, dropout off); only ``weight`` and ``bias`` of every
  ``BatchNorm2d``/``BatchNorm1d`` are trained, Adam lr 1e-3, to minimise the mean Shannon entropy
  of the softmax over all the model's classes; batch 64, one epoch over the run's mapped crops
  (shuffled with a ``torch.Generator`` seeded 0), no augmentation. It is then fused and scored
  through the adapted classifier (same Reinhard mapping, 8-view TTA).
- The plain model (no adaptation, TTA) is printed as a sanity baseline.

Labs (each set is one "run"; its crops, unlabelled, are the lab): (a) PBC ``val`` with the
strong cyan cast (R x 0.6) and (b) the strong yellow cast (B x 0.55) of
:mod:`benchmarks.domain_shift`; (c) the BCCD validation fold (55 cells); (d) PBC ``val`` as it
is. Reported, deciding nothing: LISC (whole 224 px image, as the shipped ``cross_source``
figures; argmax restricted to its 5 classes and plain 8-class) and Kaggle ``TEST`` (argmax
restricted to its 4 classes).

Rule: TENT joins ``--new-lab`` only if the mean accuracy (TTA, 8-class argmax) over (a), (b)
and (c) rises by at least 1.0 point, (a) and (b) each lose no more than 0.5 point, (c) loses no
cell and (d) loses no more than 0.5 point.

Usage (from the project root)::

    PYTHONPATH=. python -m benchmarks.tent_probe [--packs packs30] [--kaggle-packs packs30]

Writes ``benchmarks/results/tent_probe.{json,log}``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_ddrnet.classify import Classifier  # noqa: E402
from napari_ddrnet.domain_adapt import (  # noqa: E402
    adapt_batchnorm,
    lab_mean_std,
    reinhard_normalize,
)
from napari_ddrnet.model import fuse_for_inference  # noqa: E402
from napari_ddrnet.preprocess import crops_to_tensor  # noqa: E402
from napari_ddrnet.weights import DEFAULT_WEIGHTS  # noqa: E402
from training.packs import check_cut, load_pack  # noqa: E402

from .common import machine, write_json  # noqa: E402
from .cross_source import KAGGLE_CLASSES, LISC_CLASSES, lisc_crops, score  # noqa: E402
from .domain_shift import CASTS, cast  # noqa: E402

#: The fixed TENT setting of the pre-registration.
LR = 1e-3
BATCH = 64
EPOCHS = 1
SEED = 0
#: Labs the rule is judged on, and the ones only reported.
RULE_LABS = ("a_pbc_val_cyan", "b_pbc_val_yellow", "c_bccd_valfold", "d_pbc_val")
REPORTED_LABS = ("lisc", "kaggle_test")


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy (nats) of the softmax of ``logits`` ``(N, C)``.

    Parameters
    ----------
    logits : torch.Tensor
        Raw model outputs, one row per crop.

    Returns
    -------
    torch.Tensor
        Scalar: the mean over crops of ``-sum_c p_c log p_c``.
    """
    logp = torch.log_softmax(logits, 1)
    return -(logp.exp() * logp).sum(1).mean()


def tent(model: nn.Module, x: torch.Tensor, lr: float = LR, batch: int = BATCH,
         epochs: int = EPOCHS, seed: int = SEED) -> tuple[nn.Module, list[float]]:
    """TENT on a deep copy of an unfused model: BatchNorm affine parameters only.

    Parameters
    ----------
    model : torch.nn.Module
        Unfused model (after AdaBN). It is not modified.
    x : torch.Tensor
        ``(N, 3, S, S)`` crops of the lab, normalised as for inference (no labels).
    lr, batch, epochs, seed
        Adam learning rate, crops per step, passes over ``x``, shuffling seed.

    Returns
    -------
    model : torch.nn.Module
        The adapted copy, eval mode, no parameter requiring a gradient.
    losses : list of float
        The entropy of each step's batch, before that step.
    """
    m = copy.deepcopy(model).eval()  # eval: running statistics fixed, dropout off
    for p in m.parameters():
        p.requires_grad_(False)
    params = []
    for mod in m.modules():
        if isinstance(mod, (nn.BatchNorm2d, nn.BatchNorm1d)):
            for p in (mod.weight, mod.bias):
                if p is not None:
                    p.requires_grad_(True)
                    params.append(p)
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            loss = entropy(m(x[order[i:i + batch]]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    for p in m.parameters():
        p.requires_grad_(False)
    return m.eval(), losses


def same_model(a: nn.Module, b: nn.Module) -> bool:
    """True when two models hold bit-identical state dicts."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def run_lab(clf: Classifier, crops: np.ndarray, y: np.ndarray, subset, log) -> dict:
    """Plain, ``--new-lab`` and ``--new-lab`` + TENT on one lab, all with the classifier's TTA.

    Parameters
    ----------
    clf : Classifier
        The model as trained (TTA on).
    crops : numpy.ndarray
        ``(N, S, S, 3) uint8`` crops of the lab (its unlabelled "run").
    y : numpy.ndarray
        Class names, for scoring only.
    subset : tuple of str or None
        Classes the argmax is restricted to (besides the plain 8-class argmax).
    log : callable
        Line logger.

    Returns
    -------
    dict
        ``plain``, ``new_lab`` and ``tent`` scores (:func:`benchmarks.cross_source.score`),
        TENT wall time and per-step entropies.
    """
    out = {"n": int(len(crops))}
    t0 = time.perf_counter()
    out["plain"] = score(clf.predict_proba(crops), y, list(clf.classes), subset)
    adapted = clf.adapted_to_lab(crops)
    out["new_lab"] = score(adapted.predict_proba(crops), y, list(clf.classes), subset)
    t1 = time.perf_counter()
    # The unfused AdaBN model adapted_to_lab builds (it keeps only the fused one): rebuilt with
    # the same calls and checked bit for bit against it.
    colour = lab_mean_std(crops)
    x = crops_to_tensor(reinhard_normalize(crops, source_mean_std=colour), "cpu",
                        clf.bundle.mean, clf.bundle.std)
    unfused = adapt_batchnorm(clf.bundle.model, x)
    same = (all(np.array_equal(a, b) for a, b in zip(colour, adapted.lab_colour))
            and same_model(fuse_for_inference(copy.deepcopy(unfused)), adapted.model))
    out["rebuilt_matches_adapted_to_lab"] = bool(same)
    t2 = time.perf_counter()
    tent_model, losses = tent(unfused, x)
    tented = copy.copy(adapted)
    tented.model = fuse_for_inference(copy.deepcopy(tent_model)).to(clf.device).to(
        memory_format=torch.channels_last)
    out["tent_s"] = time.perf_counter() - t2
    out["tent"] = score(tented.predict_proba(crops), y, list(clf.classes), subset)
    out["entropy_first_last"] = [losses[0], losses[-1]]
    out["steps"] = len(losses)
    out["total_s"] = time.perf_counter() - t0 - (t2 - t1)
    log(f"  ({out['steps']} TENT steps, batch entropy {losses[0]:.3f} -> {losses[-1]:.3f} "
        f"nats; rebuilt AdaBN model identical to adapted_to_lab's: {same})")
    return out


def acc(r: dict, restricted: bool = False) -> float:
    """Accuracy of a score dict, percent (restricted argmax when asked and present)."""
    key = "accuracy_restricted" if restricted and "accuracy_restricted" in r else \
        "accuracy_plain"
    return 100 * r[key]


def verdict(res: dict) -> tuple[bool, list[str]]:
    """The pre-registered rule on labs (a)-(d): met, and the reasons (each clause's reading).

    Parameters
    ----------
    res : dict
        Per-lab results of :func:`run_lab`.

    Returns
    -------
    met : bool
    reasons : list of str
    """
    d = {k: acc(res[k]["tent"]) - acc(res[k]["new_lab"]) for k in RULE_LABS}
    mean_gain = float(np.mean([d[k] for k in RULE_LABS[:3]]))
    n_c = res["c_bccd_valfold"]["n"]
    cells_c = round(d["c_bccd_valfold"] * n_c / 100)
    clauses = [
        (mean_gain >= 1.0, f"mean gain over (a),(b),(c) {mean_gain:+.2f} points (need >= +1.0)"),
        (d["a_pbc_val_cyan"] >= -0.5, f"(a) {d['a_pbc_val_cyan']:+.2f} points (need >= -0.5)"),
        (d["b_pbc_val_yellow"] >= -0.5,
         f"(b) {d['b_pbc_val_yellow']:+.2f} points (need >= -0.5)"),
        (cells_c >= 0, f"(c) {cells_c:+d} cells (need >= 0)"),
        (d["d_pbc_val"] >= -0.5, f"(d) {d['d_pbc_val']:+.2f} points (need >= -0.5)"),
    ]
    return all(ok for ok, _ in clauses), [("ok   " if ok else "FAIL ") + s
                                          for ok, s in clauses]


def main(argv: list[str] | None = None) -> dict:
    """Run the probe and write ``tent_probe.{json,log}``; returns the JSON payload."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packs", type=Path, default=ROOT / "packs30")
    ap.add_argument("--kaggle-packs", type=Path, default=ROOT / "packs30",
                    help="where kaggle_test.npz lies (the shipped cross_source figures: packs30)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "tent_probe.log"
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)
        log_path.write_text("\n".join(lines) + "\n")

    t_start = time.perf_counter()
    clf = Classifier(device="cpu")  # package default weights, TTA on
    assert clf.tta
    meta = {"crop_fov_um": clf.crop_fov_um, "input_size": clf.input_size}
    check_cut(args.packs, meta)
    check_cut(args.kaggle_packs, meta)
    weights = DEFAULT_WEIGHTS.stem
    log(f"TENT probe on --new-lab: {weights} (classes {', '.join(clf.classes)}), CPU, "
        f"{torch.get_num_threads()} threads; TENT: BN affine only, Adam lr {LR:g}, batch "
        f"{BATCH}, {EPOCHS} epoch, shuffle seed {SEED}; scores with 8-view TTA")

    def names(pack: Path) -> tuple[np.ndarray, np.ndarray]:
        x, yi, cls, _ = load_pack(pack)
        return x, np.asarray([cls[i] for i in yi])

    val, y_val = names(args.packs / "pbc_val.npz")
    labs = {
        "a_pbc_val_cyan": (cast(val, CASTS["pbc_test_cyan"]), y_val, None),
        "b_pbc_val_yellow": (cast(val, CASTS["pbc_test_yellow"]), y_val, None),
        "c_bccd_valfold": (*names(args.packs / "bccd_valfold.npz"), None),
        "d_pbc_val": (val, y_val, None),
    }
    lisc, y_lisc, _ = lisc_crops(224, clf.input_size)  # whole image, as the shipped figures
    labs["lisc"] = (lisc, y_lisc, LISC_CLASSES)
    labs["kaggle_test"] = (*names(args.kaggle_packs / "kaggle_test.npz"), KAGGLE_CLASSES)

    res: dict = {}
    for name, (crops, y, subset) in labs.items():
        log(f"{name}: n={len(crops)}")
        res[name] = run_lab(clf, crops, y, subset, log)

    log("")
    log("accuracy, %, 8-view TTA (8-class argmax; LISC/Kaggle: restricted argmax, 8-class in "
        "brackets)")
    log(f"{'lab':18s} {'n':>5s} {'plain':>15s} {'--new-lab':>15s} {'+TENT':>15s} "
        f"{'diff':>7s} {'TENT s':>7s}")
    for name, r in res.items():
        restricted = name in REPORTED_LABS

        def cell(key: str, r=r, restricted=restricted) -> str:
            s = f"{acc(r[key], restricted):6.2f}"
            return s + (f" ({acc(r[key]):6.2f})" if restricted else " " * 9)

        diff = acc(r["tent"], restricted) - acc(r["new_lab"], restricted)
        log(f"{name:18s} {r['n']:5d} {cell('plain'):>15s} {cell('new_lab'):>15s} "
            f"{cell('tent'):>15s} {diff:+7.2f} {r['tent_s']:7.1f}")
    for name in ("c_bccd_valfold",):
        r = res[name]
        log(f"{name}: cells right --new-lab {round(r['new_lab']['accuracy_plain'] * r['n'])}"
            f" / +TENT {round(r['tent']['accuracy_plain'] * r['n'])} of {r['n']}")
    log("")
    log("LISC per-class recall (5-class argmax), %:")
    log(f"{'':10s} " + " ".join(f"{c:>10s}" for c in LISC_CLASSES))
    for key, label in (("plain", "plain"), ("new_lab", "--new-lab"), ("tent", "+TENT")):
        rec = res["lisc"][key]["recall"]
        log(f"{label:10s} " + " ".join(f"{100 * rec.get(c, 0):10.1f}" for c in LISC_CLASSES))
    lisc_base = acc(res["lisc"]["new_lab"], True)
    log("")
    log(f"sanity: LISC --new-lab 5-class TTA {lisc_base:.2f} % (shipped cross_source "
        f"reinhard+adabn+tta: 68.61 %; difference {lisc_base - 68.61:+.2f})")
    met, reasons = verdict(res)
    log("")
    log("rule: " + ("met" if met else "NOT met"))
    for s in reasons:
        log("  " + s)
    total = time.perf_counter() - t_start
    log(f"total wall time {total:.0f} s")
    payload = {"machine": machine(), "weights": weights,
               "setting": {"lr": LR, "batch": BATCH, "epochs": EPOCHS, "seed": SEED,
                           "params": "BatchNorm2d/BatchNorm1d weight and bias",
                           "loss": "mean softmax entropy over all classes", "tta": True},
               "results": res, "rule_met": met, "rule": reasons, "wall_s": total}
    write_json(args.out / "tent_probe.json", payload)
    return payload


if __name__ == "__main__":
    main()
