"""Compact crop packs: JPEG-encoded crops (64 px unless ``cut.json`` says otherwise) + labels
in one ``.npz`` (no pickle). A folder cut with ``--lossless`` holds PNG crops instead: what the
plugin crops live, bit for bit (a model at 112 px read JPEG-smoothed BCCD crops differently from
live ones, ``docs/cross-source.md``).

Crops are cut once, on the CPU, by the plugin's own segmentation and crop code; a pack then
travels to any machine (e.g. a lent GPU) and decodes in seconds.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from napari_ddrnet.crop import INPUT_SIZE

#: Set to ``"1"`` by ``--lossless`` (prepare, pseudo_label) before any worker starts, so
#: process-pool workers inherit it: :func:`encode_crop` then writes PNG.
LOSSLESS_ENV = "DDRNET_PACK_LOSSLESS"


def encode_jpeg(crop: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_crop(crop: np.ndarray) -> bytes:
    """A crop as a pack stores it: JPEG (quality 90), or PNG when :data:`LOSSLESS_ENV` is set."""
    if os.environ.get(LOSSLESS_ENV) == "1":
        buf = io.BytesIO()
        Image.fromarray(crop).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()
    return encode_jpeg(crop)


def save_pack(path: Path, crops: list[bytes], labels: list[int], classes: list[str],
              names: list[str]) -> None:
    """Write a pack atomically."""
    offsets = np.cumsum([0] + [len(c) for c in crops]).astype(np.int64)
    data = np.frombuffer(b"".join(crops), np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, data=data, offsets=offsets, labels=np.asarray(labels, np.int64),
             classes=np.asarray(classes), names=np.asarray(names))
    tmp.replace(path)


def load_pack(path: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Decode a pack: ``(images (N, S, S, 3) uint8, labels (N,), classes, names)``."""
    with np.load(path, allow_pickle=False) as z:
        data, offsets = z["data"], z["offsets"]
        labels = z["labels"].copy()
        classes = [str(c) for c in z["classes"]]
        names = [str(n) for n in z["names"]]
    imgs = [np.asarray(Image.open(io.BytesIO(data[offsets[i]:offsets[i + 1]].tobytes()))
                       .convert("RGB")) for i in range(len(labels))]
    images = np.stack(imgs) if imgs else np.zeros((0, 64, 64, 3), np.uint8)
    return images, labels, classes, names


def _read_raw(path: Path) -> tuple[list[bytes], np.ndarray, list[str], list[str]]:
    """A pack's still-encoded images, labels, classes and names."""
    with np.load(path, allow_pickle=False) as z:
        data, offsets = z["data"], z["offsets"]
        items = [data[offsets[i]:offsets[i + 1]].tobytes() for i in range(len(offsets) - 1)]
        return items, z["labels"].copy(), [str(c) for c in z["classes"]], \
            [str(n) for n in z["names"]]


def reencode_pack(path: Path, out: Path, fmt: str = "WEBP", quality: int = 80
                  ) -> tuple[int, int, float]:
    """Copy a pack with every image re-encoded (e.g. WebP q80), so that a large pack fits what
    a call to a lent GPU machine carries. Returns the bytes before and after and the mean
    absolute pixel error of the copy (grey levels)."""
    items, labels, classes, names = _read_raw(path)
    images, err = [], 0.0
    for item in items:
        img = np.asarray(Image.open(io.BytesIO(item)).convert("RGB"))
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt, quality=quality)
        images.append(buf.getvalue())
        back = np.asarray(Image.open(io.BytesIO(images[-1])).convert("RGB"))
        err += float(np.abs(back.astype(np.int16) - img).mean())
    save_pack(out, images, [int(x) for x in labels], classes, names)
    return sum(map(len, items)), sum(map(len, images)), err / max(1, len(items))


def split_pack(path: Path, out_a: Path, out_b: Path, every: int = 5) -> tuple[int, int]:
    """Split a pack by item: every ``every``-th name (sorted) goes to ``out_b``, the rest to
    ``out_a``. Deterministic, so a validation fold never changes between runs."""
    items, labels, classes, names = _read_raw(path)
    order = sorted(range(len(names)), key=names.__getitem__)
    b = set(order[::every])
    parts: dict[bool, tuple[list, list, list]] = {False: ([], [], []), True: ([], [], [])}
    for i in range(len(names)):
        crops, labs, nms = parts[i in b]
        crops.append(items[i])
        labs.append(int(labels[i]))
        nms.append(names[i])
    save_pack(out_a, *parts[False][:2], classes, parts[False][2])
    save_pack(out_b, *parts[True][:2], classes, parts[True][2])
    return len(parts[False][0]), len(parts[True][0])


def write_cut(out: Path, fov_um: float, size: int = INPUT_SIZE, lossless: bool = False) -> None:
    """Record how a pack folder's crops were cut (field of view, µm; side, px; whether PNG)
    and set :data:`LOSSLESS_ENV` to match; refuses to mix two fields of view, two crop sides
    or two codecs in one folder."""
    path = Path(out) / "cut.json"
    # A folder of field crops from before cut.json existed holds LEGACY_FOV_UM crops.
    legacy = any(Path(out).glob("bccd_*.npz")) or any(Path(out).glob("kaggle_t*.npz"))
    if (path.exists() or legacy) and (old := read_cut(out)) != fov_um:
        raise SystemExit(f"the field crops in {out} span {old:g} µm, not {fov_um:g}: cut into "
                         "another folder")
    if (path.exists() or legacy) and (old_size := read_size(out)) != size:
        raise SystemExit(f"the crops in {out} are {old_size} px, not {size}: cut into "
                         "another folder")
    if path.exists() and read_lossless(out) != lossless:
        raise SystemExit(f"the crops in {out} are {'not ' if lossless else ''}lossless: cut "
                         "into another folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    cut = {"crop_fov_um": fov_um, "input_size": int(size)}
    if lossless:
        cut["lossless"] = True
    path.write_text(json.dumps(cut) + "\n")
    os.environ[LOSSLESS_ENV] = "1" if lossless else "0"


#: Field of view of every pack folder cut before ``cut.json`` was written.
LEGACY_FOV_UM = 30.0


def read_cut(packs: Path) -> float:
    """The field of view, µm, a pack folder's field crops were cut at."""
    path = Path(packs) / "cut.json"
    return float(json.loads(path.read_text())["crop_fov_um"]) if path.exists() \
        else LEGACY_FOV_UM


def read_size(packs: Path) -> int:
    """The side, px, of a pack folder's crops (folders from before it was recorded: 64)."""
    path = Path(packs) / "cut.json"
    return int(json.loads(path.read_text()).get("input_size", INPUT_SIZE)) if path.exists() \
        else INPUT_SIZE


def read_lossless(packs: Path) -> bool:
    """Whether a pack folder's crops are stored losslessly (``prepare --lossless``)."""
    path = Path(packs) / "cut.json"
    return bool(json.loads(path.read_text()).get("lossless", False)) if path.exists() else False


def check_cut(packs: Path, run_meta: dict) -> None:
    """Refuse to score or recalibrate a run on packs cut at another field of view or crop side
    than the ones it trained on (its ``meta.json``): the cells would be the wrong size."""
    trained, here = float(run_meta.get("crop_fov_um", LEGACY_FOV_UM)), read_cut(packs)
    if trained != here:
        raise SystemExit(f"the run was trained on crops {trained:g} µm across, {packs} holds "
                         f"{here:g} µm crops")
    trained_px, here_px = int(run_meta.get("input_size", INPUT_SIZE)), read_size(packs)
    if trained_px != here_px:
        raise SystemExit(f"the run was trained on {trained_px} px crops, {packs} holds "
                         f"{here_px} px crops")


def main(argv: list[str] | None = None) -> None:
    """``python -m training.packs reencode IN.npz OUT.npz [--format WEBP] [--quality 80]``."""
    import argparse

    ap = argparse.ArgumentParser(description="Crop-pack utilities.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    cmd = sub.add_parser("reencode", help="copy a pack with its images re-encoded")
    cmd.add_argument("src", type=Path)
    cmd.add_argument("dst", type=Path)
    cmd.add_argument("--format", default="WEBP", help="a Pillow format name (WEBP, JPEG)")
    cmd.add_argument("--quality", type=int, default=80)
    args = ap.parse_args(argv)
    before, after, mae = reencode_pack(args.src, args.dst, args.format.upper(), args.quality)
    print(f"{args.src} -> {args.dst}: {before / 2**20:.1f} -> {after / 2**20:.1f} MiB, "
          f"mean absolute error {mae:.2f} grey levels")


if __name__ == "__main__":
    main()
