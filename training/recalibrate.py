"""Re-estimate a trained model's BatchNorm statistics on its *clean* training crops.

Training with strong photometric augmentation leaves BatchNorm running statistics that describe
the augmented distribution, not real slides; one pass over the un-augmented training crops
(:func:`napari_ddrnet.domain_adapt.adapt_batchnorm`, no labels, no weight update) puts them
back. Uses training data only, so the result may be selected and shipped like any checkpoint.

Usage::

    python -m training.recalibrate --run runs/wbc8_v2 --packs-train pbc_train bccd_trainfold \
        --out runs/wbc8_v2_recal [--val pbc_val bccd_valfold] [--batch-size 2048]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from napari_ddrnet.domain_adapt import adapt_batchnorm
from napari_ddrnet.preprocess import crops_to_tensor

from .evaluate import load_run_model
from .packs import check_cut
from .train import load_split, macro_f1, predict


def _entry(text: str):
    name, _, rep = text.partition(":")
    return [name, float(rep)] if rep else name


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--packs", type=Path, default=Path("packs"))
    ap.add_argument("--packs-train", nargs="+", required=True, type=_entry,
                    help='packs as in a config: NAME or NAME:REPEAT (e.g. bccd_trainfold:10)')
    ap.add_argument("--val", nargs="*", default=[])
    ap.add_argument("--batch-size", type=int, default=2048,
                    help="crops per forward pass (statistics averaged over them; e.g. 256 "
                         "for 224-px fields)")
    args = ap.parse_args(argv)
    model, meta = load_run_model(args.run, torch.device("cpu"))
    check_cut(args.packs, meta)
    x, _, _ = load_split(args.packs, args.packs_train)
    adapted = adapt_batchnorm(model, crops_to_tensor(x), batch_size=args.batch_size)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(adapted.state_dict(), args.out / "best.pt")
    shutil.copy(args.run / "meta.json", args.out / "meta.json")
    rec: dict = {"recalibrated_from": str(args.run), "bn_packs": args.packs_train,
                 "n_crops": int(len(x))}
    f1s = []
    for v in args.val:
        xv, yv, _ = load_split(args.packs, [v])
        p = predict(adapted, torch.from_numpy(xv), torch.device("cpu")).argmax(1)
        f1s.append(macro_f1(yv, p))
        rec[f"val_acc_{v}"] = float((p == yv).mean())
        rec[f"val_macro_f1_{v}"] = f1s[-1]
    if f1s:
        rec["val_macro_f1"] = float(np.mean(f1s))
    src = args.run / "summary.json"  # absent for a snapshot of a run still training
    summary = json.loads(src.read_text()) if src.exists() else {}
    summary["recalibration"] = rec
    summary["best_val_macro_f1"] = rec.get("val_macro_f1", summary.get("best_val_macro_f1"))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
