"""Pseudo-labelled white-cell crops from TXL-PBC sources that carry no cell classes.

Usage::

    python -m training.pseudo_label --teacher W --out packs/txl_pseudo.npz
        [--sources raabin bcd] [--keep 0.6]

Each white-cell box of a TXL-PBC field is cut at the teacher's field of view (the plugin's crop
code, at the pixel size of the field's annotated red cells, or the plugin's estimate where it
has none). The teacher then reads each source as the plugin's new-lab mode reads a new lab:
set-level Reinhard colour transfer to PBC, BatchNorm statistics re-estimated on the source's
own crops (AdaBN), and the mean of 8 dihedral views. Only the five white-cell classes every
source has may win, and only the most confident ``keep`` share of each predicted class is
kept. The pack holds the *raw* crops (not the colour-normalised ones), so a student trained on
it learns how these labs' cells look as the camera gave them.

The TXL-PBC ``pbc`` and ``bccd`` sources are left out by default: they are images of the PBC
and BCCD sets, whose test splits must stay unseen.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from napari_ddrnet.classes import WBC_CLASSES
from napari_ddrnet.crop import crop_cells
from napari_ddrnet.domain_adapt import reinhard_normalize
from napari_ddrnet.scale import resolve_pixel_size

from .detection_eval import load_txl_fields
from .packs import encode_jpeg, save_pack

#: The white-cell classes of a normal peripheral smear (no immature granulocytes), sorted.
WBC5 = tuple(sorted(c for c in WBC_CLASSES if c != "ig"))
#: Sources whose images are not also in a test split we report on. The TXL-PBC ``pbc`` and
#: ``bccd`` sources are PBC and BCCD images (test fields among them) and are refused.
DEFAULT_SOURCES = ("raabin", "bcd")
#: Crop side of the packs (every packaged model's input size).
PACK_SIDE = 64


def source_crops(source: str, fov_um: float, input_size: int, per_source: int | None = None
                 ) -> tuple[np.ndarray, list[str]]:
    """Every annotated white cell of one TXL-PBC source, cut by the plugin's crop code.

    Parameters
    ----------
    source : str
        TXL-PBC source name (``"raabin"``, ``"bcd"``).
    fov_um : float
        Crop field of view, micrometres (the teacher's).
    input_size : int
        Output side of each crop, pixels.
    per_source : int, optional
        Only the first ``per_source`` fields (a fixed subset for tests).

    Returns
    -------
    crops : numpy.ndarray
        ``(N, input_size, input_size, 3) uint8``.
    names : list of str
        ``"<image>#<k>"``, the k-th white-cell box of the image.

    Raises
    ------
    ValueError
        When the source has no annotated white cell (unknown source name).
    """
    crops, names = [], []
    for field in load_txl_fields(None, sources=(source,), per_source=per_source):
        if len(field.wbc) == 0:
            continue
        image = field.rgb()
        px = field.rbc_pixel_size() or resolve_pixel_size(image).um
        b = field.wbc
        cells = pd.DataFrame({"min_row": b[:, 0], "min_col": b[:, 1], "max_row": b[:, 2],
                              "max_col": b[:, 3], "centroid_row": (b[:, 0] + b[:, 2]) / 2,
                              "centroid_col": (b[:, 1] + b[:, 3]) / 2})
        crops.append(crop_cells(image, cells, px, out_size=input_size, fov_um=fov_um))
        names += [f"{field.image}#{k}" for k in range(len(b))]
    if not crops:
        raise ValueError(f"TXL-PBC source {source!r} has no annotated white cell")
    return np.concatenate(crops), names


def teacher_proba(model, classes: list[str], mean, std, crops: np.ndarray) -> np.ndarray:
    """New-lab reading of one source: Reinhard + AdaBN on the source's crops + 8-view TTA.

    Parameters
    ----------
    model : torch.nn.Module
        The teacher, unfused (AdaBN re-estimates its BatchNorm statistics on a copy).
    classes : list of str
        The teacher's classes; must include :data:`WBC5`.
    mean, std : sequence of float
        The teacher's input normalisation.
    crops : numpy.ndarray
        ``(N, S, S, 3) uint8`` crops of one source (one lab).

    Returns
    -------
    numpy.ndarray
        ``(N, 5)`` probabilities renormalised over :data:`WBC5` (columns in that order). The
        renormalisation forces a cell the teacher calls ig, erythroblast or platelet into one
        of the five, with an inflated confidence; the keep rule then ranks it among them.
    """
    from benchmarks.cross_source import adapted, predict

    norm = reinhard_normalize(crops)
    probs = predict(adapted(model, norm, mean, std, adabn=True), norm, mean, std, tta=True)
    p = probs[:, [classes.index(c) for c in WBC5]]
    return p / p.sum(1, keepdims=True)


def keep_confident(proba: np.ndarray, keep: float) -> np.ndarray:
    """Indices of the most confident ``keep`` share of each predicted class.

    Parameters
    ----------
    proba : numpy.ndarray
        ``(N, K)`` class probabilities.
    keep : float
        Share in (0, 1] of each predicted class to keep; ``round(keep * n)`` cells (Python's
        rounding, halves to even), at least one.

    Returns
    -------
    numpy.ndarray
        Sorted indices of the kept rows.
    """
    pred, conf = proba.argmax(1), proba.max(1)
    out = []
    for c in np.unique(pred):
        idx = np.flatnonzero(pred == c)
        n = max(1, int(round(keep * len(idx))))
        out.append(idx[np.argsort(-conf[idx], kind="stable")[:n]])
    return np.sort(np.concatenate(out))


def main(argv: list[str] | None = None) -> dict:
    """Command line: write the pseudo-labelled pack and a JSON summary beside it; returns the
    summary (per source: cells, kept, predicted and kept counts per class)."""
    from benchmarks.common import write_json
    from benchmarks.cross_source import load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", type=Path, required=True,
                    help="package weights (.safetensors) or a run folder")
    ap.add_argument("--out", type=Path, required=True, help="pack to write (.npz)")
    ap.add_argument("--sources", nargs="+", default=list(DEFAULT_SOURCES),
                    choices=DEFAULT_SOURCES)
    ap.add_argument("--keep", type=float, default=0.6,
                    help="share of each predicted class kept, most confident first")
    ap.add_argument("--fov-um", type=float, default=None,
                    help="crop field of view (default: the teacher's)")
    args = ap.parse_args(argv)
    if not 0 < args.keep <= 1:
        ap.error("--keep must be in (0, 1]")

    model, classes, mean, std, fov = load_model(args.teacher)
    fov = args.fov_um or fov
    all_crops, all_labels, all_names, summary = [], [], [], {}
    for source in args.sources:
        crops, names = source_crops(source, fov, PACK_SIDE)
        proba = teacher_proba(model, classes, mean, std, crops)
        kept = keep_confident(proba, args.keep)
        pred = proba.argmax(1)
        summary[source] = {
            "cells": len(crops), "kept": len(kept),
            "predicted": {WBC5[c]: int((pred == c).sum()) for c in range(len(WBC5))},
            "kept_by_class": {WBC5[c]: int((pred[kept] == c).sum()) for c in range(len(WBC5))},
            "min_kept_confidence": float(proba.max(1)[kept].min()),
        }
        print(source, json.dumps(summary[source]), flush=True)
        all_crops += [encode_jpeg(crops[i]) for i in kept]
        all_labels += [classes.index(WBC5[pred[i]]) for i in kept]
        all_names += [f"{source}/{names[i]}" for i in kept]
    save_pack(args.out, all_crops, all_labels, classes, all_names)
    summary["teacher"] = str(args.teacher)
    summary["fov_um"] = fov
    summary["keep"] = args.keep
    write_json(args.out.with_suffix(".json"), summary)
    return summary


if __name__ == "__main__":
    main()
