"""BCCD smear fields: images, VOC boxes, nucleus masks and per-field WBC classes."""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage import io

from .paths import data_root

#: BCCD class names mapped to the plugin's lower-case names.
BCCD_CLASS_MAP = {
    "NEUTROPHIL": "neutrophil",
    "EOSINOPHIL": "eosinophil",
    "LYMPHOCYTE": "lymphocyte",
    "MONOCYTE": "monocyte",
    "BASOPHIL": "basophil",
}


@dataclass(frozen=True)
class BccdField:
    """One annotated BCCD field."""

    name: str
    wbc_class: str  # plugin class name, "" when unknown or mixed
    split: str
    root: Path

    @property
    def image_path(self) -> Path:
        return self.root / "images" / f"{self.name}.jpg"

    def image(self) -> np.ndarray:
        """RGB uint8 image."""
        return io.imread(self.image_path)[..., :3]

    def nucleus_mask(self) -> np.ndarray:
        """Boolean nucleus mask (some masks are stored as RGB PNGs)."""
        m = io.imread(self.root / "nucleus_masks" / f"{self.name}.png")
        if m.ndim == 3:
            m = m[..., :3].max(axis=-1)
        return m > 127

    def boxes(self, kind: str = "WBC") -> np.ndarray:
        """``(N, 4)`` boxes ``min_row, min_col, max_row, max_col`` (max exclusive) of ``kind``."""
        tree = ET.parse(self.root / "annotations" / f"{self.name}.xml")
        out = []
        for obj in tree.findall("object"):
            if obj.findtext("name", "").strip() != kind:
                continue
            bb = obj.find("bndbox")
            x0, y0, x1, y1 = (int(float(bb.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax"))
            out.append((y0, x0, y1 + 1, x1 + 1))
        return np.asarray(out, dtype=np.int64).reshape(-1, 4)


def load_fields(split: str | None = None, root: Path | None = None) -> list[BccdField]:
    """Fields listed in ``bccd/labels.csv``, optionally of one split (train/test/other)."""
    root = Path(root) if root else data_root() / "bccd"
    out = []
    with open(root / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if split is not None and row["split"] != split:
                continue
            raw = row["wbc_class"].strip()
            cls = BCCD_CLASS_MAP.get(raw, "")
            out.append(BccdField(row["image"], cls, row["split"], root))
    return out
