# Sixteenth session: the first 112 px candidate on BCCD test crops stored as packs (JPEG q90)
# against the same cells cut live (as the plugin does) and the live crops re-encoded as JPEG.
# Run from the project root:
#   PYTHONPATH=. .venv/bin/python docs/results/ft112_2026-12-08/bccd_jpeg_vs_live.py
import io
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, ".")
from napari_ddrnet.classify import Classifier  # noqa: E402
from training.bccd import load_fields  # noqa: E402
from training.packs import encode_jpeg, load_pack  # noqa: E402
from training.prepare import field_wbc_crop  # noqa: E402

MODELS = [("v7", None, "packs96_38"),
          ("cand112", "runs/candidates/ft112_s0_112.safetensors", "packs112_38")]


def calls(clf: Classifier, crops: np.ndarray) -> np.ndarray:
    return np.asarray(clf.classes)[clf.predict_proba(crops).argmax(1)]


def rejpeg(crop: np.ndarray) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(encode_jpeg(crop))).convert("RGB"))


for name, weights, packs in MODELS:
    clf = Classifier(weights, device="cpu")
    x, yi, cls, _ = load_pack(f"{packs}/bccd_test.npz")
    y = np.asarray(cls)[yi]
    p = calls(clf, x)
    live, ly = [], []
    for f in load_fields("test"):
        if not f.wbc_class:
            continue
        b = f.boxes()
        c = field_wbc_crop(f.image(), b[:1] if len(b) else None, 38.0, clf.input_size)
        if c is not None:
            live.append(c)
            ly.append(f.wbc_class)
    live, ly = np.stack(live), np.asarray(ly)
    pl = calls(clf, live)
    pj = calls(clf, np.stack([rejpeg(c) for c in live]))
    n_to_e = (ly == "neutrophil") & (pl == "eosinophil")
    n_to_e_jpeg = (ly == "neutrophil") & (pj == "eosinophil")
    print(name, "pack(JPEG)", (p == y).mean().round(4), len(y),
          "| live", (pl == ly).mean().round(4), len(ly),
          "| live re-JPEG q90", (pj == ly).mean().round(4),
          "| live n->e", int(n_to_e.sum()), "| jpeg n->e", int(n_to_e_jpeg.sum()), flush=True)
