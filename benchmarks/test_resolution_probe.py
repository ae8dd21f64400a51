"""Test resolution: the default's tensors read at a larger input side (same field of view),
as is and with BatchNorm statistics re-estimated at that side on clean training crops, against
the shipped side; scored by the rule written before the run (``docs/cross-source.md``, "more
pixels per cell at test time", sixteenth session).

Usage::

    python -m benchmarks.test_resolution_probe [--side 112] [--packs-side packs112_38]
        [--packs-base packs96_38] [--sets pbc_val bccd_valfold pbc_test bccd_fields lisc]
        [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_ddrnet.classify import Classifier  # noqa: E402
from napari_ddrnet.domain_adapt import adapt_batchnorm  # noqa: E402
from napari_ddrnet.model import fuse_for_inference  # noqa: E402
from napari_ddrnet.preprocess import crops_to_tensor  # noqa: E402

from .accuracy import shipped_on_bccd_fields  # noqa: E402
from .scale_tta_probe import accuracy, live_set  # noqa: E402

#: The labelled part of the default's own recalibration mixture (docs/results/gen96_round).
RECAL_MIX = [["pbc_train", 0.75], ["bccd_trainfold", 10]]


def at_side(clf: Classifier, side: int, recal_packs: Path | None) -> Classifier:
    """A copy of ``clf`` that cuts its crops at ``side`` px (same field of view); with
    ``recal_packs``, its BatchNorm statistics re-estimated on :data:`RECAL_MIX` at that side."""
    from training.packs import check_cut
    from training.train import load_split

    out = copy.copy(clf)
    out.bundle = dataclasses.replace(clf.bundle, input_size=side, meta={
        **clf.bundle.meta, "name": f"{clf.bundle.name}@{side}px"
        + ("+bn" if recal_packs else "")})
    if recal_packs is not None:
        check_cut(recal_packs, {"input_size": side, "crop_fov_um": clf.crop_fov_um})
        x, _, _ = load_split(recal_packs, RECAL_MIX)
        model = adapt_batchnorm(clf.bundle.model, crops_to_tensor(x, "cpu", clf.bundle.mean,
                                                                   clf.bundle.std))
        out.model = fuse_for_inference(model).to(clf.device).to(
            memory_format=torch.channels_last)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--side", type=int, default=112)
    ap.add_argument("--packs-side", type=Path, default=Path("packs112_38"))
    ap.add_argument("--packs-base", type=Path, default=Path("packs96_38"))
    ap.add_argument("--sets", nargs="+", default=["pbc_val", "bccd_valfold", "pbc_test",
                                                  "bccd_fields", "lisc"])
    ap.add_argument("--variants", nargs="+", default=["base", "side", "side_bn"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    base = Classifier(args.weights, device="cpu")
    t0 = time.perf_counter()
    models = {"base": base}
    if "side" in args.variants:
        models["side"] = at_side(base, args.side, None)
    if "side_bn" in args.variants:
        models["side_bn"] = at_side(base, args.side, args.packs_side)
    print(f"test-resolution probe: {base.bundle.name} at {base.input_size} px (base) and "
          f"{args.side} px as is (side) / BatchNorm re-estimated (side_bn; "
          f"{time.perf_counter() - t0:.0f} s), 8-view TTA", flush=True)
    rows: dict[str, dict] = {}
    for name in args.sets:
        t0 = time.perf_counter()
        row: dict = {}
        for key, clf in models.items():
            size = clf.input_size
            if name == "bccd_fields":
                res = shipped_on_bccd_fields(clf)
                row[key] = res["accuracy"]
                row[f"{key}_confusions"] = res["confusions"]
                row["n"] = res["n"]
                continue
            live = live_set(name, size)
            if live is not None:
                crops, y, subset = live
            else:
                from training.packs import load_pack

                subset = None
                packs = args.packs_base if key == "base" else args.packs_side
                crops, labels, pack_classes, names = load_pack(packs / f"{name}.npz")
                assert crops.shape[1] == size, (name, crops.shape, size)
                y = np.asarray(pack_classes)[labels]
                # The two packs must hold the same cells (prepare's fold split is seeded).
                row.setdefault("names", sorted(names))
                assert row["names"] == sorted(names), f"{name}: the packs hold other cells"
            row[key] = accuracy(clf.predict_proba(crops), y, clf.classes, subset)
            row["n"] = int(len(y))
        row.pop("names", None)
        rows[name] = row
        print(f"{name:12s} n={row['n']:5d}  " + "  ".join(
            f"{k} {100 * row[k]:6.2f} %" for k in models) +
            f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "test_resolution_probe.json").write_text(json.dumps(
            {"weights": base.bundle.name, "side": args.side, "recal_mix": RECAL_MIX,
             "sets": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
