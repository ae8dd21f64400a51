"""Is the red-cell pixel-size estimate stable when a field is shown at half size?

BCCD ``test`` fields (640x480) are estimated as they are and after a 2x downsample
(anti-aliased), with and without a JPEG round trip (quality 75); then the Kaggle TEST fields
(320x240, augmented half-size BCCD copies) are estimated as a population. Prints per-field
ratios (half-size estimate / (2 x full-size estimate)) and medians.

Usage (project root)::

    PYTHONPATH=src:. python docs/results/scale_half_size_2026-12-06/half_size.py [N_KAGGLE]
"""

import glob
import io as bio
import sys

import numpy as np
from PIL import Image
from skimage import io, transform

from napari_ddrnet.scale import estimate_pixel_size
from training.bccd import load_fields
from training.paths import data_root


def half(rgb: np.ndarray, jpeg: bool) -> np.ndarray:
    out = transform.rescale(rgb, 0.5, channel_axis=-1, anti_aliasing=True, preserve_range=True)
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if jpeg:
        buf = bio.BytesIO()
        Image.fromarray(out).save(buf, "JPEG", quality=75)
        out = np.asarray(Image.open(bio.BytesIO(buf.getvalue())).convert("RGB"))
    return out


def est(rgb: np.ndarray) -> float:
    r = estimate_pixel_size(rgb)
    return float("nan") if r is None else float(r)


ratios = {False: [], True: []}
full_px = []
for f in load_fields("test"):
    rgb = f.image()
    full = est(rgb)
    full_px.append(full)
    row = [f.name, f"full {full:.4f}"]
    for jpeg in (False, True):
        h = est(half(rgb, jpeg))
        ratios[jpeg].append(h / (2 * full))
        row.append(f"half{'+jpeg' if jpeg else ''} {h:.4f} ratio {h / (2 * full):.3f}")
    print(" ".join(row), flush=True)
for jpeg, r in ratios.items():
    r = np.asarray(r)
    print(f"half size{' + JPEG q75' if jpeg else ''}: median ratio {np.nanmedian(r):.3f} "
          f"IQR [{np.nanpercentile(r, 25):.3f}, {np.nanpercentile(r, 75):.3f}] "
          f"declined {int(np.isnan(r).sum())} of {len(r)}")
print(f"BCCD test full-size estimate: median {np.nanmedian(full_px):.4f} µm/px")
n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
paths = sorted(glob.glob(str(data_root() / "kaggle_blood_cells" / "**" / "TEST" / "*" / "*.jp*g"),
                         recursive=True))[::max(1, 2487 // n)]
kag = np.asarray([est(io.imread(p)[..., :3]) for p in paths])
print(f"Kaggle TEST, {len(paths)} fields (every {max(1, 2487 // n)}th): median "
      f"{np.nanmedian(kag):.4f} µm/px IQR [{np.nanpercentile(kag, 25):.4f}, "
      f"{np.nanpercentile(kag, 75):.4f}], declined {int(np.isnan(kag).sum())}; "
      f"2 x the BCCD full-size median = {2 * np.nanmedian(full_px):.4f}")
