"""Compact crop packs: JPEG-encoded 64 px crops + labels in one ``.npz`` (no pickle).

Crops are cut once, on the CPU, by the plugin's own segmentation and crop code; a pack then
travels to any machine (e.g. a lent GPU) and decodes in seconds.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def encode_jpeg(crop: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


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


def reencode_pack(path: Path, out: Path, fmt: str = "WEBP", quality: int = 80) -> tuple[int, int]:
    """Copy a pack with every image re-encoded (e.g. WebP q80: a 224 px Kaggle field shrinks
    from 14 to 3.5 KB at a mean absolute error of 2 grey levels), so that a large pack fits
    what a call to a lent GPU machine carries. Returns the bytes before and after."""
    with np.load(path, allow_pickle=False) as z:
        data, offsets = z["data"], z["offsets"]
        labels, classes, names = z["labels"], [str(c) for c in z["classes"]], \
            [str(n) for n in z["names"]]
    images = []
    for i in range(len(labels)):
        img = Image.open(io.BytesIO(data[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB")
        buf = io.BytesIO()
        img.save(buf, format=fmt, quality=quality)
        images.append(buf.getvalue())
    save_pack(out, images, [int(x) for x in labels], classes, names)
    return int(offsets[-1]), sum(len(b) for b in images)


def split_pack(path: Path, out_a: Path, out_b: Path, every: int = 5) -> tuple[int, int]:
    """Split a pack by item: every ``every``-th name (sorted) goes to ``out_b``, the rest to
    ``out_a``. Deterministic, so a validation fold never changes between runs."""
    with np.load(path, allow_pickle=False) as z:
        data, offsets = z["data"], z["offsets"]
        labels, classes, names = z["labels"], [str(c) for c in z["classes"]], \
            [str(n) for n in z["names"]]
    order = sorted(range(len(names)), key=names.__getitem__)
    b = set(order[::every])
    parts: dict[bool, tuple[list, list, list]] = {False: ([], [], []), True: ([], [], [])}
    for i in range(len(names)):
        crops, labs, nms = parts[i in b]
        crops.append(data[offsets[i]:offsets[i + 1]].tobytes())
        labs.append(int(labels[i]))
        nms.append(names[i])
    save_pack(out_a, *parts[False][:2], classes, parts[False][2])
    save_pack(out_b, *parts[True][:2], classes, parts[True][2])
    return len(parts[False][0]), len(parts[True][0])


def main(argv: list[str] | None = None) -> None:
    """``python -m training.packs reencode IN.npz OUT.npz [--format WEBP] [--quality 80]``."""
    import argparse

    ap = argparse.ArgumentParser(description="Crop-pack utilities.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    re = sub.add_parser("reencode", help="copy a pack with its images re-encoded")
    re.add_argument("src", type=Path)
    re.add_argument("dst", type=Path)
    re.add_argument("--format", default="WEBP", help="a Pillow format name (WEBP, JPEG)")
    re.add_argument("--quality", type=int, default=80)
    args = ap.parse_args(argv)
    before, after = reencode_pack(args.src, args.dst, args.format.upper(), args.quality)
    print(f"{args.src} -> {args.dst}: {before / 2**20:.1f} -> {after / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
