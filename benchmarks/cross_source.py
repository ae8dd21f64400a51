"""Cross-source accuracy: one model on every labelled source, with and without test-time
domain adaptation (AdaBN, Reinhard colour normalisation) and 8-view TTA.

Sources (crops cut by the plugin's own code):

- ``pbc_test`` — PBC test split, centre square (``training.prepare`` pack), 8 classes;
- ``bccd_test`` — BCCD test fields, crop of the detected WBC that matches the expert box;
- ``kaggle_test`` — the Kaggle "blood-cells" TEST split (4 classes; argmax restricted to them);
- ``lisc`` — LISC (an unseen lab), 1,287 single-cell images of 224 px at ~0.15 µm/px: the
  centred square of ``--lisc-side`` px (default: the model's field of view at 0.15 µm/px,
  200 px for 30 µm; larger than the image, the rest is filled with its background) is
  cut with :func:`napari_ddrnet.crop.crop_square`; 5 classes, reported both with the argmax
  restricted to the 5 LISC classes and as the plain 8-class argmax;
- optionally (``--bccd-fields``) the 69 BCCD test fields end to end (segmentation + crop +
  classification, ``benchmarks.accuracy``), plain and with AdaBN.

Domain adaptation never sees a label: AdaBN re-estimates BatchNorm statistics on the evaluated
set's own crops, Reinhard maps the set's LAB mean/std to PBC train's.

Usage::

    python -m benchmarks.cross_source [--weights W.safetensors | --weights runs/NAME]
        [--name NAME] [--packs packs] [--adabn-sweep] [--bccd-fields]

Writes ``benchmarks/results/cross_source_<name>.json`` and ``.log``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from skimage import io
from sklearn.metrics import accuracy_score, f1_score, recall_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_ddrnet.classes import MATURE_WBC  # noqa: E402
from napari_ddrnet.crop import INPUT_SIZE, crop_square  # noqa: E402
from napari_ddrnet.domain_adapt import adapt_batchnorm, reinhard_normalize  # noqa: E402
from napari_ddrnet.model import fuse_for_inference  # noqa: E402
from napari_ddrnet.preprocess import crops_to_tensor  # noqa: E402
from training.packs import check_cut, load_pack  # noqa: E402
from training.paths import data_root  # noqa: E402

from .common import machine, write_json  # noqa: E402

LISC_CLASSES = MATURE_WBC
KAGGLE_CLASSES = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")
#: LISC pixel size from its red cells (~7.5 µm across ~45-55 px): ~0.15 µm/px, so a 30 µm
#: field of view is ~200 of the 224 px.
LISC_UM_PER_PX = 0.15
LISC_SIDE_PX = 200


class LoadedModel(NamedTuple):
    """An unfused model and the transforms its crops need."""

    model: torch.nn.Module
    classes: list[str]
    mean: tuple
    std: tuple
    fov_um: float
    input_size: int


def load_model(weights: Path | None) -> LoadedModel:
    """Unfused model, classes, mean, std, crop field of view (µm) and crop side (px) from
    package weights (``.safetensors``) or a run folder (``best.pt`` + ``meta.json``)."""
    if weights is not None and Path(weights).is_dir():
        from napari_ddrnet.preprocess import MEAN, STD
        from training.evaluate import load_run_model
        from training.packs import LEGACY_FOV_UM

        model, meta = load_run_model(Path(weights), torch.device("cpu"))
        return LoadedModel(model.eval(), list(meta["classes"]), MEAN, STD,
                           float(meta.get("crop_fov_um", LEGACY_FOV_UM)),
                           int(meta.get("input_size", INPUT_SIZE)))
    from napari_ddrnet.weights import load_bundle

    b = load_bundle(weights)
    return LoadedModel(b.model.eval(), list(b.classes), b.mean, b.std, b.crop_fov_um,
                       b.input_size)


def lisc_crops(side_px: float = LISC_SIDE_PX, size: int = INPUT_SIZE
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LISC crops ``(N, size, size, 3)``, class names ``(N,)`` and cell groups ``(N,)``; a
    side beyond the 224 px image is filled with the image's background colour."""
    root = data_root() / "lisc"
    rows = list(csv.DictReader(open(root / "labels.csv", newline="")))
    crops = []
    for r in rows:
        img = io.imread(root / r["file"])[..., :3]
        h, w = img.shape[:2]
        crops.append(crop_square(img, (h / 2, w / 2), side_px, size))
    return (np.stack(crops), np.asarray([r["class"] for r in rows]),
            np.asarray([r["cell_group"] for r in rows]))


@torch.inference_mode()
def predict(model: torch.nn.Module, crops: np.ndarray, mean, std, tta: bool,
            batch: int = 256) -> np.ndarray:
    """Softmax probabilities of a (fused, eval) model; TTA averages the 8 dihedral views."""
    out = []
    for i in range(0, len(crops), batch):
        x = crops_to_tensor(crops[i:i + batch], "cpu", mean, std)
        views = [torch.rot90(x, k, (2, 3)) for k in range(4)] if tta else [x]
        if tta:
            views += [torch.flip(v, (3,)) for v in views]
        p = sum(torch.softmax(model(v), 1) for v in views) / len(views)
        out.append(p.numpy())
    return np.concatenate(out)


def score(probs: np.ndarray, y_names: np.ndarray, classes: list[str],
          subset: tuple[str, ...] | None, groups: np.ndarray | None = None) -> dict:
    """Accuracy (plain 8-class argmax, and restricted to ``subset`` when given), macro-F1 and
    per-class recall of the restricted prediction; group-mean accuracy when ``groups``."""
    y = np.asarray([classes.index(c) for c in y_names])
    plain = probs.argmax(1)
    res = {"n": int(len(y)), "accuracy_plain": float(accuracy_score(y, plain))}
    pred = plain
    if subset is not None:
        idx = np.asarray([classes.index(c) for c in subset])
        pred = idx[probs[:, idx].argmax(1)]
        res["accuracy_restricted"] = float(accuracy_score(y, pred))
    present = sorted(set(y.tolist()))
    res["macro_f1"] = float(f1_score(y, pred, labels=present, average="macro",
                                     zero_division=0))
    rec = recall_score(y, pred, labels=present, average=None, zero_division=0)
    res["recall"] = {classes[c]: float(r) for c, r in zip(present, rec)}
    if groups is not None:
        ok = pred == y
        res["accuracy_group_mean"] = float(np.mean([ok[groups == g].mean()
                                                    for g in np.unique(groups)]))
    res["predicted_counts"] = {classes[c]: int((pred == c).sum()) for c in np.unique(pred)}
    return res


def _adabn_token(mode: str) -> str:
    return next((t for t in mode.split("+") if t.startswith("adabn")), "")


def adapted(model: torch.nn.Module, crops: np.ndarray, mean, std, adabn: bool,
            include_1d: bool = True) -> torch.nn.Module:
    """A fused copy for fast inference, after AdaBN on ``crops`` when asked."""
    m = adapt_batchnorm(model, crops_to_tensor(crops, "cpu", mean, std),
                        include_1d=include_1d) if adabn else copy.deepcopy(model)
    return fuse_for_inference(m.eval())


ALL_MODES = ("plain", "tta", "adabn", "adabn+tta", "reinhard", "reinhard+tta",
             "reinhard+adabn", "reinhard+adabn+tta", "adabn_conv", "adabn_conv+tta",
             "reinhard+adabn_conv", "reinhard+adabn_conv+tta")


def evaluate_sources(model, classes, mean, std, sources: dict, log,
                     modes: dict | None = None) -> dict:
    """Each source under each mode of ``modes[source]`` (default :data:`ALL_MODES`, i.e.
    {plain, Reinhard} x {no AdaBN, AdaBN} x {single, TTA})."""
    results: dict = {}
    for name, (crops, y, subset, groups) in sources.items():
        results[name] = {}
        want = set((modes or {}).get(name, ALL_MODES))
        t0 = time.time()
        for reinhard in (False, True):
            if not any(("reinhard" in w) == reinhard for w in want):
                continue
            x = reinhard_normalize(crops) if reinhard else crops
            # AdaBN of every BatchNorm layer ("adabn"), or of the convolutional ones only
            # ("adabn_conv": the head's BatchNorm1d keeps the source statistics).
            for adabn in ("", "adabn", "adabn_conv"):
                if not any(("reinhard" in w) == reinhard and _adabn_token(w) == adabn
                           for w in want):
                    continue
                m = adapted(model, x, mean, std, bool(adabn), adabn != "adabn_conv")
                for tta in (False, True):
                    key = "+".join(k for k, on in (("reinhard", reinhard), (adabn, adabn),
                                                   ("tta", tta)) if on) or "plain"
                    if key not in want:
                        continue
                    r = score(predict(m, x, mean, std, tta), y, classes, subset, groups)
                    results[name][key] = r
                    acc = r.get("accuracy_restricted", r["accuracy_plain"])
                    log(f"{name:12s} {key:22s} n={r['n']:5d} acc {100 * acc:6.2f} % "
                        f"(plain 8-class {100 * r['accuracy_plain']:6.2f} %) "
                        f"macro-F1 {100 * r['macro_f1']:6.2f} %")
        log(f"  ({name}: {time.time() - t0:.0f} s)")
    return results


def adabn_sweep(model, classes, mean, std, crops, y, subset, sizes, draws, log,
                variants=("all_bn", "conv_bn_only")) -> dict:
    """LISC accuracy (single pass, restricted) after AdaBN on ``k`` random crops, ``draws``
    times each: how many crops of a new lab AdaBN needs. Two variants: every BatchNorm layer,
    and the convolutional ones only (the head's BatchNorm1d keeps the source statistics)."""
    out: dict = {}
    rng = np.random.default_rng(0)
    for include_1d in (True, False):
        variant = "all_bn" if include_1d else "conv_bn_only"
        if variant not in variants:
            continue
        out[variant] = {}
        for k in sizes:
            accs = []
            for _ in range(draws if k < len(crops) else 1):
                sel = rng.choice(len(crops), size=min(k, len(crops)), replace=False)
                t = crops_to_tensor(crops[sel], "cpu", mean, std)
                m = fuse_for_inference(adapt_batchnorm(model, t, include_1d=include_1d))
                r = score(predict(m, crops, mean, std, False), y, classes, subset)
                accs.append(r["accuracy_restricted"])
            out[variant][str(k)] = {"mean": float(np.mean(accs)), "std": float(np.std(accs)),
                                    "min": float(np.min(accs)), "draws": len(accs)}
            log(f"AdaBN sweep {variant:13s} k={k:5d}: LISC 5-class "
                f"{100 * np.mean(accs):.2f} ± {100 * np.std(accs):.2f} % "
                f"(min {100 * np.min(accs):.2f}, {len(accs)} draws)")
    return out


def bccd_fields(weights: Path | None, model, mean, std, adapt_crops: np.ndarray, log,
                modes=("plain", "tta", "adabn", "adabn+tta")) -> dict:
    """BCCD test fields end to end (``benchmarks.accuracy``), single pass and TTA, plain and
    with AdaBN on the BCCD test crops (unlabelled)."""
    from napari_ddrnet.classify import Classifier

    from .accuracy import shipped_on_bccd_fields

    out = {}
    for adabn in (False, True):
        for tta in (False, True):
            if ("+".join(k for k, on in (("adabn", adabn), ("tta", tta)) if on)
                    or "plain") not in modes:
                continue
            clf = Classifier(weights, device="cpu", tta=tta)
            if adabn:
                clf.model = adapted(model, adapt_crops, mean, std, True)
            r = shipped_on_bccd_fields(clf)
            key = "+".join(k for k, on in (("adabn", adabn), ("tta", tta)) if on) or "plain"
            out[key] = r
            log(f"bccd_fields  {key:22s} n={r['n']:5d} acc {100 * r['accuracy']:6.2f} %")
    return out


def compare_markdown(paths: list[Path]) -> str:
    """Markdown table of several result JSONs side by side: one row per source and mode,
    one column per model (accuracy, restricted to the source's classes where it has fewer;
    LISC also as plain 8-class argmax)."""
    runs = {Path(p).stem.replace("cross_source_", ""): json.loads(Path(p).read_text())
            for p in paths}
    names = list(runs)
    lines = ["| source | mode | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    sources = dict.fromkeys(s for r in runs.values() for s in r["results"])
    for src in sources:
        modes = dict.fromkeys(m for r in runs.values() for m in r["results"].get(src, {}))
        for mode in modes:
            cells = []
            for n in names:
                r = runs[n]["results"].get(src, {}).get(mode)
                if r is None:
                    cells.append("")
                    continue
                acc = 100 * r.get("accuracy_restricted", r["accuracy_plain"])
                extra = f" ({100 * r['accuracy_plain']:.1f})" if src == "lisc" else ""
                cells.append(f"{acc:.2f}{extra}")
            lines.append(f"| {src} | {mode} | " + " | ".join(cells) + " |")
    for mode in dict.fromkeys(m for r in runs.values() for m in (r.get("bccd_fields") or {})):
        cells = [f"{100 * runs[n]['bccd_fields'][mode]['accuracy']:.2f}"
                 if mode in (runs[n].get("bccd_fields") or {}) else "" for n in names]
        lines.append(f"| bccd_fields (end to end) | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=None,
                    help=".safetensors weights or a training run folder (default: shipped)")
    ap.add_argument("--name", default=None, help="results file suffix (default: weights stem)")
    ap.add_argument("--packs", type=Path, default=ROOT / "packs")
    ap.add_argument("--lisc-side", type=float, default=None,
                    help="LISC crop side in pixels before resizing to 64 (224 = whole image; "
                         "default: the model's field of view at 0.15 µm/px)")
    ap.add_argument("--sources", nargs="*",
                    default=["pbc_test", "bccd_test", "kaggle_test", "lisc"])
    ap.add_argument("--modes", nargs="*", default=[], metavar="SOURCE=MODE,MODE",
                    help="restrict a source to some modes (default: all of ALL_MODES), e.g. "
                         "kaggle_test=plain,adabn; saves time on a shared CPU")
    ap.add_argument("--fields-modes", default="plain,tta,adabn,adabn+tta",
                    help="modes for --bccd-fields")
    ap.add_argument("--adabn-sweep", action="store_true")
    ap.add_argument("--sweep-sizes", type=int, nargs="*", default=[8, 16, 32, 64, 128, 100000])
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--sweep-variants", nargs="*", default=["all_bn", "conv_bn_only"])
    ap.add_argument("--bccd-fields", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--compare", type=Path, nargs="*",
                    help="only print a Markdown table of these result JSONs side by side")
    args = ap.parse_args(argv)
    if args.compare:
        print(compare_markdown(args.compare), end="")
        return {}
    torch.set_num_threads(args.threads)
    name = args.name or (args.weights.stem if args.weights else "ddrnet_pbc8")
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / f"cross_source_{name}.log"
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)
        log_path.write_text("\n".join(lines) + "\n")

    modes = {kv.split("=")[0]: kv.split("=")[1].split(",") for kv in args.modes}
    model, classes, mean, std, fov_um, size = load_model(args.weights)
    check_cut(args.packs, {"crop_fov_um": fov_um, "input_size": size})
    if args.lisc_side is None:
        args.lisc_side = round(fov_um / LISC_UM_PER_PX)
    log(f"cross-source accuracy of {args.weights or 'shipped ddrnet_pbc8'} "
        f"(classes {', '.join(classes)}); LISC crop {args.lisc_side:g} px of 224")
    sources = {}
    for s in args.sources:
        if s == "lisc":
            crops, y, groups = lisc_crops(args.lisc_side, size)
            sources[s] = (crops, y, LISC_CLASSES, groups)
            continue
        x, yi, cls, _ = load_pack(args.packs / f"{s}.npz")
        sources[s] = (x, np.asarray([cls[i] for i in yi]),
                      KAGGLE_CLASSES if s.startswith("kaggle") else None, None)
    payload: dict = {"machine": machine(), "weights": str(args.weights or "shipped"),
                     "lisc_side_px": args.lisc_side,
                     "results": evaluate_sources(model, classes, mean, std, sources, log,
                                                modes)}
    if args.adabn_sweep and "lisc" in sources:
        crops, y, subset, _ = sources["lisc"]
        payload["adabn_sweep_lisc"] = adabn_sweep(model, classes, mean, std, crops, y, subset,
                                                  args.sweep_sizes, args.draws, log,
                                                  args.sweep_variants)
    if args.bccd_fields:
        if args.weights is not None and Path(args.weights).is_dir():
            log("bccd_fields needs .safetensors weights: skipped")
        else:
            adapt = load_pack(args.packs / "bccd_test.npz")[0]
            payload["bccd_fields"] = bccd_fields(args.weights, model, mean, std, adapt, log,
                                                 args.fields_modes.split(","))
    write_json(args.out / f"cross_source_{name}.json", payload)
    return payload


if __name__ == "__main__":
    main()
