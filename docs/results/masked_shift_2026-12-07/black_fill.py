"""How much black fill the packs' crops hold (thirteenth session, the reason for the third look
at the warning, docs/cross-source.md): share of crops with more than 1 % of pixels whose
brightest channel is below 20, and the mean share of such pixels.

Usage (repo root)::

    D=docs/results/masked_shift_2026-12-07
    python $D/black_fill.py > $D/black_fill.log
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from training.packs import load_pack  # noqa: E402

for name in ("pbc_test", "bccd_test", "bccd_valfold", "kaggle_test"):
    crops = load_pack(ROOT / "packs96_38" / f"{name}.npz")[0]
    dark = (crops.max(-1) < 20).mean((1, 2))
    print(f"{name:<14} {len(crops):>5} crops: {100 * (dark > 0.01).mean():5.1f} % with > 1 % "
          f"black pixels; {100 * dark.mean():.2f} % of all pixels black")
