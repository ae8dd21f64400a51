"""A procedurally generated blood smear with known white-cell positions.

Used as napari sample data, by the demo and by the tests: red cells with central pallor,
platelets, and white cells of different looks (lobed neutrophils, round lymphocytes, kidney-
shaped monocytes, bilobed eosinophils with orange granules). No dataset image is involved.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

BACKGROUND = (224, 219, 214)
RBC_RIM = (206, 148, 158)
RBC_PALLOR = (219, 186, 190)
NUCLEUS = (92, 52, 148)
PLATELET = (150, 110, 175)
CYTOPLASM = {
    "neutrophil": (214, 190, 206),
    "lymphocyte": (198, 205, 214),
    "monocyte": (200, 198, 211),
    "eosinophil": (226, 152, 118),
}
#: Cell diameter, µm.
WBC_DIAMETER_UM = {"neutrophil": 12.0, "lymphocyte": 9.0, "monocyte": 15.0, "eosinophil": 13.0}
TRUTH_COLUMNS = ["kind", "centroid_row", "centroid_col", "min_row", "min_col", "max_row",
                 "max_col"]


def _disk(rr, cc, r0, c0, radius):
    return (rr - r0) ** 2 + (cc - c0) ** 2 <= radius**2


def _ellipse(rr, cc, r0, c0, a, b, angle):
    ca, sa = np.cos(angle), np.sin(angle)
    y, x = rr - r0, cc - c0
    u, v = x * ca + y * sa, -x * sa + y * ca
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _nucleus_mask(kind, rr, cc, r0, c0, um, rng):
    ang = rng.uniform(0, np.pi)
    if kind == "lymphocyte":
        return _disk(rr, cc, r0, c0, 3.4 * um)
    if kind == "monocyte":
        m = _ellipse(rr, cc, r0, c0, 4.6 * um, 3.4 * um, ang)
        notch = _disk(rr, cc, r0 + 3.2 * um * np.cos(ang), c0 - 3.2 * um * np.sin(ang), 2.0 * um)
        return m & ~notch
    n_lobes = 2 if kind == "eosinophil" else int(rng.integers(3, 5))
    m = np.zeros(rr.shape, bool)
    spread = 2.6 * um
    for k in range(n_lobes):
        t = ang + k * 2 * np.pi / n_lobes + rng.uniform(-0.3, 0.3)
        lr, lc = r0 + spread * np.sin(t), c0 + spread * np.cos(t)
        m |= _ellipse(rr, cc, lr, lc, 1.9 * um, 1.5 * um, t)
        # Thin chromatin bridge to the centre keeps the lobes one (segmented) nucleus.
        for s in np.linspace(0, 1, 6):
            m |= _disk(rr, cc, r0 + s * (lr - r0), c0 + s * (lc - c0), 0.45 * um)
    return m


def synthetic_smear(
    shape: tuple[int, int] = (480, 640),
    pixel_size_um: float = 0.1,
    wbc_kinds: tuple[str, ...] = ("neutrophil", "lymphocyte", "monocyte", "eosinophil"),
    rbc_density: float = 0.35,
    n_platelets: int = 6,
    seed: int = 0,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Generate a smear field.

    Parameters
    ----------
    shape : tuple of int
        ``(rows, cols)``.
    pixel_size_um : float
        Micrometres per pixel (0.1 ~ a 100x objective; 0.5 ~ a low-magnification field).
    wbc_kinds : tuple of str
        One white cell of each listed kind is placed, without overlaps.
    rbc_density : float
        Fraction of the free area covered by red cells.
    n_platelets : int
        Number of platelets.
    seed : int
        Random seed (the output is deterministic for a seed).

    Returns
    -------
    image : numpy.ndarray
        ``(rows, cols, 3) uint8`` RGB.
    truth : pandas.DataFrame
        One row per white cell: ``kind``, centroid and bounding box (pixels, max exclusive).
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    um = 1.0 / pixel_size_um
    img = np.empty((h, w, 3), np.float32)
    img[:] = BACKGROUND
    occupied = np.zeros((h, w), bool)
    rows = []

    def window(r0, c0, rad):
        a0, a1 = max(0, int(r0 - rad) - 1), min(h, int(r0 + rad) + 2)
        b0, b1 = max(0, int(c0 - rad) - 1), min(w, int(c0 + rad) + 2)
        rr, cc = np.mgrid[a0:a1, b0:b1]
        return (slice(a0, a1), slice(b0, b1)), rr, cc

    # White cells first, away from each other and (mostly) inside the field.
    for kind in wbc_kinds:
        rad = WBC_DIAMETER_UM[kind] / 2 * um
        for _ in range(200):
            r0, c0 = rng.uniform(rad + 2, h - rad - 2), rng.uniform(rad + 2, w - rad - 2)
            sl, rr, cc = window(r0, c0, rad * 1.3)
            if not occupied[sl].any():
                break
        cell = _disk(rr, cc, r0, c0, rad)
        nuc = _nucleus_mask(kind, rr, cc, r0, c0, um, rng) & cell
        sub = img[sl]
        sub[cell] = CYTOPLASM[kind]
        if kind == "eosinophil":  # orange granules
            gran = cell & ~nuc & (rng.random(cell.shape) < 0.25)
            sub[gran] = (200, 110, 80)
        sub[nuc] = NUCLEUS
        occupied[sl] |= _disk(rr, cc, r0, c0, rad * 1.15)
        ys, xs = np.nonzero(cell)
        rows.append({"kind": kind, "centroid_row": float(ys.mean() + sl[0].start),
                     "centroid_col": float(xs.mean() + sl[1].start),
                     "min_row": int(ys.min() + sl[0].start), "min_col": int(xs.min() + sl[1].start),
                     "max_row": int(ys.max() + sl[0].start + 1),
                     "max_col": int(xs.max() + sl[1].start + 1)})

    # Red cells: random non-overlapping-with-WBC disks with central pallor.
    rad = 3.75 * um
    n_rbc = int(rbc_density * h * w / (np.pi * rad * rad))
    for _ in range(n_rbc):
        r0, c0 = rng.uniform(-rad / 2, h + rad / 2), rng.uniform(-rad / 2, w + rad / 2)
        radius = rad * rng.uniform(0.9, 1.1)
        sl, rr, cc = window(r0, c0, radius)
        if rr.size == 0 or occupied[sl].any():
            continue
        disk = _disk(rr, cc, r0, c0, radius)
        pallor = _disk(rr, cc, r0, c0, radius * 0.45)
        sub = img[sl]
        sub[disk] = RBC_RIM
        sub[pallor & disk] = RBC_PALLOR
        occupied[sl] |= disk & False  # red cells may overlap each other, not white cells

    for _ in range(n_platelets):
        r0, c0 = rng.uniform(0, h), rng.uniform(0, w)
        sl, rr, cc = window(r0, c0, 1.2 * um)
        if rr.size == 0 or occupied[sl].any():
            continue
        img[sl][_disk(rr, cc, r0, c0, 1.1 * um)] = PLATELET

    img = ndi.gaussian_filter(img, sigma=(0.6 * um / 10 + 0.5, 0.6 * um / 10 + 0.5, 0))
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return image, pd.DataFrame(rows, columns=TRUTH_COLUMNS)
