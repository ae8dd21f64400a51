"""How large a cell is in the classifier's crops, per source: training crops against field crops.

Usage::

    python -m benchmarks.crop_scale [--estimate N]

Field crops (BCCD packs, the plugin on any field) span the model's ``crop_fov_um`` at the pixel
size the plugin resolves, on a field usually its red-cell estimate. PBC training crops are the
centred square of the whole single-cell image instead (``crop_centre``), so their field of view
is ``short side x pixel size``. This prints each TXL-PBC source's pixel size from its annotated
red-cell boxes (median side = 7.5 µm, the reference of ``benchmarks.pixel_size``) and the
red-cell estimator's reading on N PBC val images (resized in the shared set to 128 px on the
short side), the field of view of a PBC centre-square crop in both, and how large a cell is in
a PBC training crop relative to a field crop of each shipped model: below 1, the classifier
sees a cell larger in field images than it learned it from PBC. The estimator's reading is the
one that matters for consistency: field crops are cut at the estimator's pixel size.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from skimage import io

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from napari_ddrnet import scale  # noqa: E402
from napari_ddrnet.crop import CROP_FOV_UM  # noqa: E402
from training.paths import data_root  # noqa: E402

from .common import print_table, write_json  # noqa: E402
from .pixel_size import txl_items  # noqa: E402

PBC_SHORT_SIDE = 360  # CellaVision DM96 export, 360 x 363 (data README)
WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "napari_ddrnet" / "weights"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--estimate", type=int, default=60)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/crop_scale.json"))
    args = ap.parse_args(argv)
    by_src: dict[str, list[float]] = {}
    for src, _path, ref in txl_items(1):
        if ref is not None:
            by_src.setdefault(src, []).append(ref)
    rows = []
    for src, refs in sorted(by_src.items()):
        r = np.asarray(refs)
        rows.append({"source": src, "images": len(r),
                     "um_per_px_median": round(float(np.median(r)), 4),
                     "q25": round(float(np.percentile(r, 25)), 4),
                     "q75": round(float(np.percentile(r, 75)), 4)})
    print("Pixel size from annotated red-cell boxes (median side = 7.5 µm)")
    print_table(rows, list(rows[0]))
    readings = {"box reference": next(r["um_per_px_median"] for r in rows
                                      if r["source"] == "txl-pbc")}
    out: dict = {"reference_per_source": rows, "crop_fov_um_default": CROP_FOV_UM}
    if args.estimate:
        rows_pbc = list(csv.DictReader(open(data_root() / "pbc" / "splits.csv", newline="")))
        val = [r for r in rows_pbc if r["split"] == "val"]
        sel = val[::max(1, len(val) // args.estimate)]
        est = []
        for r in sel[:args.estimate]:
            image = io.imread(data_root() / "pbc" / r["file"])[..., :3]
            um = scale.estimate_pixel_size(image)
            if um is not None:  # at 360 px on the short side
                est.append(um * min(image.shape[:2]) / PBC_SHORT_SIDE)
        e = np.asarray(est)
        out["pbc_val_estimate"] = {"images": len(sel[:args.estimate]), "measured": len(e),
                                   "um_per_px_median_at_360": float(np.median(e)) if len(e)
                                   else None}
        if len(e):
            readings["estimator"] = float(np.median(e))
            print(f"\nred-cell estimator on {len(e)}/{len(sel[:args.estimate])} PBC val images: "
                  f"median {np.median(e):.4f} µm/px at 360 px "
                  f"(IQR {np.percentile(e, 25):.4f}-{np.percentile(e, 75):.4f})")
    fovs = {p.stem: float(json.loads(p.read_text())["crop_fov_um"])
            for p in sorted(WEIGHTS.glob("*.json"))}
    table = []
    for how, um in readings.items():
        row = {"pbc_pixel_size": how, "um_per_px": round(um, 4),
               "pbc_crop_fov_um": round(PBC_SHORT_SIDE * um, 1)}
        for name, fov in fovs.items():
            row[f"{name} ({fov:g} µm)"] = round(fov / (PBC_SHORT_SIDE * um), 3)
        table.append(row)
    print("\nPBC centre-square training crop, and how large a cell is in it relative to a field "
          "crop of each shipped model (1 = consistent)")
    print_table(table, list(table[0]))
    out["pbc"] = table
    write_json(args.json, out)


if __name__ == "__main__":
    main()
