"""End-to-end time for one 640x480 field on the CPU, and where the time goes.

Usage::

    python -m benchmarks.pipeline_speed [--threads 2] [--repeats 15] [--image FIELD.jpg]
        [--weights CANDIDATE.safetensors]

Stages: read (decode the file), pixel size (red-cell estimate), segment, crop, classify. The
total is the median of full ``read + analyze`` runs; stage shares come from separate timings
of each stage on the same field. Default field: BCCD ``BloodImage_00003`` when the data is
present, else the synthetic smear (written to a temporary PNG so reading is timed too).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from napari_ddrnet.classify import Classifier
from napari_ddrnet.crop import crop_cells
from napari_ddrnet.image_io import read_image
from napari_ddrnet.pipeline import analyze
from napari_ddrnet.scale import estimate_pixel_size
from napari_ddrnet.segment import field_statistics, segment_wbc

from .common import machine, print_table, timeit, write_json


def default_field() -> Path:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from training.paths import data_root

    p = data_root() / "bccd" / "images" / "BloodImage_00003.jpg"
    if p.exists():
        return p
    from PIL import Image

    from napari_ddrnet.synthetic import synthetic_smear

    out = Path(tempfile.mkdtemp()) / "synthetic.png"
    Image.fromarray(synthetic_smear()[0]).save(out)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--image", type=Path)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--weights", type=Path, default=None,
                    help="time these weights instead of the shipped ones (writes "
                         "pipeline_speed_<name>.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = args.image or default_field()
    clf = Classifier(args.weights, device="cpu")
    image = read_image(path)[0][0]

    def full():
        analyze(read_image(path)[0][0], None, clf, return_labels=True)

    total = timeit(full, repeats=args.repeats, warmup=2)
    px = estimate_pixel_size(image)

    def given():
        analyze(read_image(path)[0][0], px, clf, return_labels=True)

    total_given = timeit(given, repeats=args.repeats, warmup=1)
    seg = segment_wbc(image, px)
    crops = crop_cells(image, seg.cells, px, clf.input_size, fov_um=clf.crop_fov_um)
    stages = {
        "read": timeit(lambda: read_image(path), repeats=args.repeats),
        "pixel_size": timeit(lambda: estimate_pixel_size(image), repeats=args.repeats),
        "segment": timeit(lambda: segment_wbc(image, px, stats=field_statistics(image)),
                          repeats=args.repeats),
        "crop": timeit(lambda: crop_cells(image, seg.cells, px, clf.input_size,
                                          fov_um=clf.crop_fov_um),
                       repeats=args.repeats),
        "classify": timeit(lambda: clf.predict_proba(crops), repeats=args.repeats),
    }
    s = sum(stages.values())
    rows = [{"stage": k, "ms": round(v * 1e3, 1), "share_%": round(100 * v / s, 1)}
            for k, v in stages.items()]
    print(f"field {path.name} {image.shape[1]}x{image.shape[0]}, {len(seg.cells)} cells, "
          f"CPU threads {args.threads}, model {clf.bundle.name} ({clf.input_size} px)")
    print_table(rows, ["stage", "ms", "share_%"])
    print(f"\nend to end (read + analyze), median of {args.repeats}: {total * 1e3:.1f} ms "
          f"(target <= 150 ms)")
    print(f"with the pixel size given (no estimate): {total_given * 1e3:.1f} ms")
    payload = {"machine": machine(), "image": str(path.name), "n_cells": len(seg.cells),
               "total_ms": total * 1e3, "total_given_px_ms": total_given * 1e3,
               "stages_ms": {k: v * 1e3 for k, v in stages.items()}}
    name = f"pipeline_speed_{args.weights.stem}" if args.weights else "pipeline_speed"
    write_json(args.out / f"{name}.json", payload)
    return payload


if __name__ == "__main__":
    main()
