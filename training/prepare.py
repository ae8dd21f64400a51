"""Cut training/evaluation crops from the shared datasets into packs.

Usage::

    python -m training.prepare --out packs [--only pbc bccd kaggle kaggle_test kaggle_fields]
        [--workers 2] [--fov-um 38] [--size 96]

PBC images are single centred cells (CellaVision): their centre square is the crop. BCCD and
Kaggle images are whole fields: the plugin's segmentation finds the cells and the plugin's crop
function cuts them, exactly as at inference time. ``kaggle_fields`` (not in the default set)
packs the Kaggle fields whole at 224 px for the paper-faithful comparison; ``kaggle_test`` cuts
only the Kaggle TEST split (the evaluation pack).
"""

from __future__ import annotations

import argparse
import csv
import time
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from skimage import io, transform

from napari_ddrnet.classes import PBC_CLASSES
from napari_ddrnet.crop import CROP_FOV_UM, INPUT_SIZE, crop_cells, crop_centre
from napari_ddrnet.segment import segment_wbc

from .bccd import load_fields
from .detection_eval import box_iou
from .packs import encode_crop, encode_jpeg, save_pack, split_pack, write_cut
from .paths import data_root

KAGGLE_CLASSES = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")


def _pbc_item(path: str, size: int = INPUT_SIZE) -> bytes:
    return encode_crop(crop_centre(io.imread(path)[..., :3], size))


def prepare_pbc(out: Path, workers: int, fov_um: float = CROP_FOV_UM,
                size: int = INPUT_SIZE) -> None:
    """PBC packs: the centred square of each single-cell image, whatever ``fov_um`` (the
    single-cell path classifies the same square), ``size`` px across."""
    root = data_root() / "pbc"
    rows = list(csv.DictReader(open(root / "splits.csv", newline="")))
    with Pool(workers) as pool:
        for split in ("train", "val", "test"):
            sel = [r for r in rows if r["split"] == split]
            crops = pool.map(partial(_pbc_item, size=size),
                             [str(root / r["file"]) for r in sel], chunksize=64)
            save_pack(out / f"pbc_{split}.npz", crops,
                      [PBC_CLASSES.index(r["class"]) for r in sel], list(PBC_CLASSES),
                      [r["file"] for r in sel])
            print(f"pbc {split}: {len(sel)} crops", flush=True)


def field_wbc_crop(image: np.ndarray, gt_box: np.ndarray | None = None,
                   fov_um: float = CROP_FOV_UM, size: int = INPUT_SIZE) -> np.ndarray | None:
    """Crop of a field's white cell: the detection best matching ``gt_box`` (IoU >= 0.3), or
    without a box the detection with the largest nucleus, ``fov_um`` across (the plugin's crop
    at inference), ``size`` px across. ``None`` when nothing is found."""
    seg = segment_wbc(image)
    cells = seg.cells
    if len(cells) == 0:
        return None
    if gt_box is not None:
        iou = box_iou(cells[["min_row", "min_col", "max_row", "max_col"]].to_numpy(), gt_box)
        best = int(np.argmax(iou[:, 0]))
        if iou[best, 0] < 0.3:
            return None
    else:
        best = int(np.argmax(cells["nucleus_area_px"].to_numpy()))
    return crop_cells(image, cells.iloc[[best]], seg.pixel_size_um, out_size=size,
                      fov_um=fov_um)[0]


def _bccd_item(field, fov_um: float = CROP_FOV_UM, size: int = INPUT_SIZE) -> bytes | None:
    boxes = field.boxes()
    crop = field_wbc_crop(field.image(), boxes[:1] if len(boxes) else None, fov_um, size)
    return None if crop is None else encode_crop(crop)


def prepare_bccd(out: Path, workers: int, fov_um: float = CROP_FOV_UM,
                 size: int = INPUT_SIZE) -> None:
    with Pool(workers) as pool:
        for split in ("train", "test"):
            fields = [f for f in load_fields(split) if f.wbc_class in PBC_CLASSES]
            crops = pool.map(partial(_bccd_item, fov_um=fov_um, size=size), fields, chunksize=8)
            keep = [(c, f) for c, f in zip(crops, fields) if c is not None]
            save_pack(out / f"bccd_{split}.npz", [c for c, _ in keep],
                      [PBC_CLASSES.index(f.wbc_class) for _, f in keep], list(PBC_CLASSES),
                      [f.name for _, f in keep])
            print(f"bccd {split}: {len(keep)}/{len(fields)} fields cropped", flush=True)


def _kaggle_item(path: str, fov_um: float = CROP_FOV_UM, size: int = INPUT_SIZE
                 ) -> tuple[bytes, bool]:
    image = io.imread(path)[..., :3]
    crop = field_wbc_crop(image, fov_um=fov_um, size=size)
    if crop is None:  # no nucleus found: fall back to the whole field
        return encode_crop(crop_centre(image, size)), False
    return encode_crop(crop), True


def _kaggle_split(split: str) -> tuple[list[str], list[int], list[str]]:
    """Paths, class indices and pack names (relative paths) of a Kaggle split, sorted."""
    root = data_root() / "kaggle_blood_cells"
    paths = sorted(str(p) for p in (root / split).glob("*/*.jpeg"))
    labels = [KAGGLE_CLASSES.index(Path(p).parent.name.lower()) for p in paths]
    return paths, labels, [str(Path(p).relative_to(root)) for p in paths]


def prepare_kaggle(out: Path, workers: int, fov_um: float = CROP_FOV_UM,
                   size: int = INPUT_SIZE, splits: tuple[str, ...] = ("TRAIN", "TEST")) -> None:
    with Pool(workers) as pool:
        for split in splits:
            paths, labels, names = _kaggle_split(split)
            res = pool.map(partial(_kaggle_item, fov_um=fov_um, size=size), paths, chunksize=32)
            save_pack(out / f"kaggle_{split.lower()}.npz", [r[0] for r in res], labels,
                      list(KAGGLE_CLASSES), names)
            found = sum(r[1] for r in res)
            print(f"kaggle {split}: {len(paths)} images, cell found in {found}", flush=True)


#: Side of the whole-field images of the paper-faithful setting ("resized to 224 x 224 x 3").
FIELD_SIDE = 224


def _kaggle_field_item(path: str) -> bytes:
    """A whole Kaggle field resized to FIELD_SIDE square, as the paper feeds it (the 4:3 field
    is squeezed, not cropped: "cropping has not been performed")."""
    image = io.imread(path)[..., :3]
    small = transform.resize(image, (FIELD_SIDE, FIELD_SIDE), order=1, anti_aliasing=True,
                             preserve_range=True)
    return encode_jpeg(np.clip(np.rint(small), 0, 255).astype(np.uint8), quality=95)


def prepare_kaggle_fields(out: Path, workers: int, fov_um: float = CROP_FOV_UM,
                          size: int = INPUT_SIZE) -> None:
    """``kaggle_field224_{train,test}``: whole fields at 224 px (the paper's input), no
    segmentation, for the paper-faithful run beside our cell crops (``size`` is not used: the
    fields are FIELD_SIDE px)."""
    with Pool(workers) as pool:
        for split in ("TRAIN", "TEST"):
            paths, labels, names = _kaggle_split(split)
            res = pool.map(_kaggle_field_item, paths, chunksize=32)
            save_pack(out / f"kaggle_field224_{split.lower()}.npz", res, labels,
                      list(KAGGLE_CLASSES), names)
            print(f"kaggle fields {split}: {len(paths)} images at {FIELD_SIDE} px", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("packs"))
    ap.add_argument("--only", nargs="*", default=["pbc", "bccd", "kaggle"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fov-um", type=float, default=CROP_FOV_UM,
                    help="field of view of the field crops (BCCD, Kaggle), µm; recorded in "
                         "OUT/cut.json, which training copies into the run and export into the "
                         f"weights card (default {CROP_FOV_UM:g})")
    ap.add_argument("--size", type=int, default=INPUT_SIZE,
                    help="crop side, px; recorded in OUT/cut.json and carried into the run "
                         f"and the weights card like the field of view (default {INPUT_SIZE})")
    ap.add_argument("--lossless", action="store_true",
                    help="store the crops as PNG, exactly as the plugin cuts them live, not as "
                         "JPEG (quality 90); recorded in OUT/cut.json")
    args = ap.parse_args(argv)
    t0 = time.time()
    write_cut(args.out, args.fov_um, args.size, args.lossless)
    for name in args.only:
        {"pbc": prepare_pbc, "bccd": prepare_bccd, "kaggle": prepare_kaggle,
         "kaggle_test": partial(prepare_kaggle, splits=("TEST",)),
         "kaggle_fields": prepare_kaggle_fields}[name](args.out, args.workers, args.fov_um,
                                                       size=args.size)
    if (args.out / "bccd_train.npz").exists():
        # A BCCD validation fold (every 5th training field) for models selected on BCCD too.
        n_a, n_b = split_pack(args.out / "bccd_train.npz", args.out / "bccd_trainfold.npz",
                              args.out / "bccd_valfold.npz")
        print(f"bccd train split: {n_a} trainfold / {n_b} valfold")
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
