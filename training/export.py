"""Export a trained DDRNet run as package weights (safetensors + JSON metadata with sha256).

Usage::

    python -m training.export --run runs/pbc8_ddrnet \
        --out src/napari_ddrnet/weights/ddrnet_pbc8.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from napari_ddrnet.crop import CROP_FOV_UM, INPUT_SIZE
from napari_ddrnet.model import DDRNetConfig
from napari_ddrnet.preprocess import MEAN, STD
from napari_ddrnet.weights import export_weights


def export_run(run: Path, out: Path, extra: dict | None = None) -> dict:
    """Write the run's best checkpoint and metadata to ``out``; returns the metadata."""
    meta_run = json.loads((run / "meta.json").read_text())
    if meta_run["arch"] != "ddrnet":
        raise ValueError("only DDRNet runs can be shipped")
    state = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    cfg = DDRNetConfig(num_classes=len(meta_run["classes"]), **meta_run.get("ddrnet", {}))
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() \
        else {}
    evals = json.loads((run / "eval.json").read_text()) if (run / "eval.json").exists() else {}
    meta = {
        "name": out.stem,
        "architecture": "DDRNet",
        "classes": meta_run["classes"],
        "input_size": INPUT_SIZE,
        "crop_fov_um": CROP_FOV_UM,
        "mean": list(MEAN),
        "std": list(STD),
        "config": cfg.to_dict(),
        "training": {k: summary.get(k) for k in ("config", "epochs", "n_train", "train_time_s",
                                                  "device", "best_val_macro_f1")},
        "metrics": {t: {k: r[k] for k in ("n", "accuracy", "macro_f1", "mcc", "ece")}
                    for t, r in evals.items()},
        "reproduce": [
            "python -m training.prepare --out packs",
            f"python -m training.train --config training/configs/pbc8_ddrnet.json --out {run}",
            f"python -m training.evaluate --run {run} --test pbc_test bccd_test",
            f"python -m training.export --run {run} --out {out}",
        ],
        **(extra or {}),
    }
    return export_weights(state, meta, out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Export a DDRNet run as package weights.")
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--extra", type=Path, help="JSON file merged into the metadata")
    args = ap.parse_args(argv)
    extra = json.loads(args.extra.read_text()) if args.extra else None
    meta = export_run(args.run, args.out, extra)
    print(f"wrote {args.out} sha256={meta['sha256']}")


if __name__ == "__main__":
    main()
