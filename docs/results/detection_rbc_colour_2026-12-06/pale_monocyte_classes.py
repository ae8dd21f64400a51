"""Where the three density classes of the held-out PBC field 4c0a711c fall (its white cell is
not found): pixel counts per class, how many lie in the white cell's box, median density."""

import numpy as np
from skimage import filters

import napari_ddrnet.segment as S
from training.detection_eval import load_txl_fields

fields = {f.image[:8]: f for f in load_txl_fields("held", sources=["pbc"])}
field = fields["4c0a711c"]
rgb = field.rgb()
white = np.percentile(rgb.reshape(-1, 3), 95, axis=0)
od = S.optical_density(rgb, white)
tot = od.sum(-1)
low, high = filters.threshold_multiotsu(tot, classes=3)
print("white", white, "low high", low, high)
r0, c0, r1, c1 = field.wbc[0]
box = np.zeros(tot.shape, bool)
box[r0:r1, c0:c1] = True
for name, m in [("bg", tot <= low), ("mid", (tot > low) & (tot <= high)), ("hi", tot > high)]:
    print(name, m.sum(), "in wbc box", (m & box).sum(), "median od",
          np.median(od[m], axis=0).round(3))
nucm = box & (tot > np.percentile(tot[box], 85))  # the darkest pixels in the box: nucleus
print("nucleus-ish od", np.median(od[nucm], axis=0).round(3), np.median(tot[nucm]))
rbcm = (~box) & (tot > low)
print("rbc-ish od", np.median(od[rbcm], axis=0).round(3))
