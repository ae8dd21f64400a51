"""Weight-space ensemble of a base model and its fine-tune (WiSE-FT, Wortsman et al. 2022).

``theta = (1 - alpha) * theta_base + alpha * theta_finetuned`` for every floating-point tensor
(BatchNorm running statistics included). Both models must share the initialisation (a
fine-tune of the base), so they lie in one basin and the mix keeps most of the base's
in-domain accuracy and most of the fine-tune's robustness, for no training cost.

Usage::

    python -m training.wise --base src/napari_ddrnet/weights/ddrnet_pbc8.safetensors \
        --finetuned runs/wbc8_v2 --alpha 0.5 --out runs/wbc8_v2_wise05 [--val pbc_val bccd_valfold]

Writes a run folder (``best.pt``, ``meta.json``, ``summary.json``) that ``training.evaluate``
and ``training.export`` read like any other run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from .models import build_model
from .train import load_split, macro_f1, predict


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` weights or a run folder's ``best.pt``."""
    path = Path(path)
    if path.is_dir():
        return torch.load(path / "best.pt", map_location="cpu", weights_only=True)
    from safetensors.torch import load_file

    return load_file(str(path))


def interpolate(base: dict, tuned: dict, alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * base + alpha * tuned`` for float tensors; integer buffers (BatchNorm's
    ``num_batches_tracked``) are taken from ``tuned``."""
    if base.keys() != tuned.keys():
        raise ValueError("the two models do not have the same tensors")
    return {k: torch.lerp(base[k].float(), tuned[k].float(), alpha).to(base[k].dtype)
            if base[k].is_floating_point() else tuned[k].clone() for k in base}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--finetuned", type=Path, required=True, help="run folder of the fine-tune")
    ap.add_argument("--alpha", type=float, nargs="+", required=True)
    ap.add_argument("--out", type=Path, required=True, help="run folder (one alpha) or prefix")
    ap.add_argument("--packs", type=Path, default=Path("packs"))
    ap.add_argument("--val", nargs="*", default=[], help="score each alpha on these packs")
    args = ap.parse_args(argv)
    meta = json.loads((args.finetuned / "meta.json").read_text())
    base, tuned = load_state(args.base), load_state(args.finetuned)
    vals = [(v, *load_split(args.packs, [v])[:2]) for v in args.val]
    for a in args.alpha:
        out = args.out if len(args.alpha) == 1 else Path(f"{args.out}_{a:g}")
        out.mkdir(parents=True, exist_ok=True)
        state = interpolate(base, tuned, a)
        torch.save(state, out / "best.pt")
        (out / "meta.json").write_text(json.dumps(meta, indent=1))
        rec: dict = {"alpha": a, "base": str(args.base), "finetuned": str(args.finetuned)}
        if vals:
            model = build_model(meta["arch"], len(meta["classes"]), meta.get("ddrnet"))
            model.load_state_dict(state)
            f1s = []
            for name, xv, yv in vals:
                p = predict(model, torch.from_numpy(xv), torch.device("cpu")).argmax(1)
                f1s.append(macro_f1(yv, p))
                rec[f"val_acc_{name}"] = float((p == yv).mean())
                rec[f"val_macro_f1_{name}"] = f1s[-1]
            rec["val_macro_f1"] = float(np.mean(f1s))
        summary = {"config": {"wise_ft": rec}, "classes": meta["classes"],
                   "best_val_macro_f1": rec.get("val_macro_f1"), "history": [],
                   "device": "cpu"}
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
