# Sixteenth session: the first 112 px candidate on BCCD test crops stored as packs (JPEG q90)
# against the same crops cut live (as the plugin does) and the live crops re-encoded as JPEG.
# Run from the project root: PYTHONPATH=. .venv/bin/python docs/results/ft112_2026-12-08/bccd_jpeg_vs_live.py
import io, sys
import numpy as np
from PIL import Image
sys.path.insert(0, '.')
from napari_ddrnet.classify import Classifier
from training.packs import load_pack, encode_jpeg
from training.prepare import field_wbc_crop
from training.bccd import load_fields

for name, w, packs in [("v7", None, "packs96_38"), ("cand112", "runs/candidates/ft112_s0_112.safetensors", "packs112_38")]:
    clf = Classifier(w, device="cpu")
    x, yi, cls, _ = load_pack(f"{packs}/bccd_test.npz")
    y = np.asarray(cls)[yi]
    p = np.asarray(clf.classes)[clf.predict_proba(x).argmax(1)]
    # live crops (no JPEG) of the same cells, the same cut as the pack
    live, ly = [], []
    for f in load_fields("test"):
        if not f.wbc_class:
            continue
        b = f.boxes()
        c = field_wbc_crop(f.image(), b[:1] if len(b) else None, 38.0, clf.input_size)
        if c is not None:
            live.append(c); ly.append(f.wbc_class)
    live, ly = np.stack(live), np.asarray(ly)
    pl = np.asarray(clf.classes)[clf.predict_proba(live).argmax(1)]
    rej = np.stack([np.asarray(Image.open(io.BytesIO(encode_jpeg(c))).convert("RGB")) for c in live])
    pj = np.asarray(clf.classes)[clf.predict_proba(rej).argmax(1)]
    print(name, "pack(JPEG)", (p == y).mean().round(4), len(y), "| live", (pl == ly).mean().round(4), len(ly),
          "| live re-JPEG q90", (pj == ly).mean().round(4),
          "| live n->e", int(((ly == "neutrophil") & (pl == "eosinophil")).sum()),
          "| jpeg n->e", int(((ly == "neutrophil") & (pj == "eosinophil")).sum()), flush=True)
