"""The TXL-PBC fields (all 1,008) whose pixel-size estimate changes when black fill became
background, before and after.

Usage (project root; see ``_old_scale.py`` for ``/tmp/head_scale.py``)::

    PYTHONPATH=src:.:docs/results/scale_half_size_2026-12-06 \
        python docs/results/scale_half_size_2026-12-06/txl_estimates.py
"""

from _old_scale import old

import napari_ddrnet.scale as sc
from training.detection_eval import load_txl_fields

n = changed = 0
for f in load_txl_fields(None):
    rgb = f.rgb()
    a, b = old.estimate_pixel_size(rgb), sc.estimate_pixel_size(rgb)
    n += 1
    if a != b:
        changed += 1
        print(f.source, f.image[:8], a, b)
print("fields", n, "changed", changed)
