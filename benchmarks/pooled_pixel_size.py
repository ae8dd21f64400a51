"""How rough a single-cell export's own pixel size is, and what a folder's pooled one gives.

For each folder of single-cell exports (LISC's five class folders, all 1,287 crops; the first
200 PBC test exports of each class): the images' own pixel sizes
(:func:`napari_ddrnet.single_cell.image_pixel_size`: red-cell estimate, else the 0.1 µm/px
default), their spread, and the folder's pooled value
(:func:`napari_ddrnet.scale.pooled_pixel_size`, what ``count --single-cell`` uses).
No ground truth exists for either set's scale; the point is the spread within one analyser.

Usage::

    python -m benchmarks.pooled_pixel_size [--per-folder 200]

Writes ``benchmarks/results/pooled_pixel_size.{json,log}``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_ddrnet.scale import pooled_pixel_size  # noqa: E402
from napari_ddrnet.single_cell import image_pixel_size  # noqa: E402
from training.paths import data_root  # noqa: E402

from .common import machine, write_json  # noqa: E402


def folders(per_folder: int) -> dict[str, list[Path]]:
    """``name -> image files``: LISC class folders (all), PBC test exports per class."""
    root = data_root()
    out = {f"lisc/{d.name}": sorted(d.glob("*.jpg"))
           for d in sorted((root / "lisc").iterdir()) if d.is_dir()}
    pbc: dict[str, list[Path]] = {}
    for r in csv.DictReader(open(root / "pbc" / "splits.csv", newline="")):
        if r["split"] == "test" and len(pbc.setdefault(r["class"], [])) < per_folder:
            pbc[r["class"]].append(root / "pbc" / r["file"])
    out.update({f"pbc_test/{c}": fs for c, fs in sorted(pbc.items())})
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-folder", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    t0 = time.time()
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    log(f"{'folder':<24}{'images':>7}{'default':>8}{'p5':>7}{'p25':>7}{'median':>7}"
        f"{'p75':>7}{'p95':>7}{'pooled':>8}")
    res = {}
    for name, files in folders(args.per_folder).items():
        sizes = [image_pixel_size(np.asarray(Image.open(f).convert("RGB"))) for f in files]
        est = np.array([p.um for p in sizes if p.source == "estimated"])
        pooled = pooled_pixel_size(sizes)
        q = np.percentile(est, [5, 25, 50, 75, 95]) if len(est) else [np.nan] * 5
        n_default = sum(p.source == "default" for p in sizes)
        res[name] = {"images": len(files), "default": n_default,
                     "quantiles_5_25_50_75_95": [float(v) for v in q],
                     "pooled": None if pooled is None else pooled.um}
        log(f"{name:<24}{len(files):>7}{n_default:>8}" + "".join(f"{v:>7.3f}" for v in q)
            + (f"{pooled.um:>8.3f}" if pooled else f"{'-':>8}"))
    log(f"({time.time() - t0:.0f} s)")
    payload = {"folders": res, "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "pooled_pixel_size.json", payload)
    (args.out / "pooled_pixel_size.log").write_text("\n".join(lines) + "\n")
    return payload


if __name__ == "__main__":
    main()
