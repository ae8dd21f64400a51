"""Pseudo-labelled white-cell crops from TXL-PBC sources that carry no cell classes.

Usage::

    python -m training.pseudo_label --teacher W [W ...] --out packs/txl_pseudo.npz
        [--sources raabin bcd] [--keep 0.6] [--reviewed] [--rank wbc5|all]

Each white-cell box of a TXL-PBC field is cut at the teacher's field of view (the plugin's crop
code, at the pixel size of the field's annotated red cells, or the plugin's estimate where it
has none). The teacher then reads each source as the plugin's new-lab mode reads a new lab:
set-level Reinhard colour transfer to PBC, BatchNorm statistics re-estimated on the source's
own crops (AdaBN), and the mean of 8 dihedral views. Only the five white-cell classes every
source has may win, and only the most confident ``keep`` share of each predicted class is
kept. The pack holds the *raw* crops (not the colour-normalised ones), so a student trained on
it learns how these labs' cells look as the camera gave them.

Several teachers make an ensemble: each reads crops cut at its own field of view, and their
8-class probabilities are averaged. ``--reviewed`` applies our review of the TXL-PBC boxes
(drops boxes marked ``not_wbc`` or ``duplicate``, adds the white cells marked ``missing_box``).
``--rank all`` drops cells whose 8-class call is not one of the five white-cell classes (a
teacher that calls a box an erythroblast or platelet says it is no white cell) and ranks the
rest by the probability of their class among all eight, not renormalised over five.

The TXL-PBC ``pbc`` and ``bccd`` sources are left out by default: they are images of the PBC
and BCCD sets, whose test splits must stay unseen.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from napari_ddrnet.classes import MATURE_WBC
from napari_ddrnet.crop import crop_cells
from napari_ddrnet.domain_adapt import reinhard_normalize
from napari_ddrnet.scale import resolve_pixel_size

from .detection_eval import REVIEWED_BOXES, REVIEWED_BOXES_HELD, load_txl_fields
from .packs import LOSSLESS_ENV, encode_crop, read_lossless, save_pack

#: The white-cell classes of a normal peripheral smear (no immature granulocytes), sorted.
WBC5 = MATURE_WBC
#: Sources whose images are not also in a test split we report on. The TXL-PBC ``pbc`` and
#: ``bccd`` sources are PBC and BCCD images (test fields among them) and are refused.
DEFAULT_SOURCES = ("raabin", "bcd")
#: Default crop side of the pack (the packaged models' input size).
PACK_SIDE = 64


BoxFixes = dict[str, tuple[set[tuple[int, int, int, int]], list[tuple[int, int, int, int]]]]


def reviewed_box_fixes(paths: tuple[Path, ...] = (REVIEWED_BOXES, REVIEWED_BOXES_HELD)
                       ) -> BoxFixes:
    """Our review of the TXL-PBC white-cell boxes, per image.

    Returns
    -------
    dict
        Image name -> (boxes to drop: ``not_wbc`` and ``duplicate``, as
        ``(min_row, min_col, max_row, max_col)`` tuples; boxes to add: ``missing_box``).
    """
    cols = ["min_row", "min_col", "max_row", "max_col"]
    table = pd.concat([pd.read_csv(p) for p in paths])
    fixes: BoxFixes = {}
    for row in table.itertuples(index=False):
        drop, add = fixes.setdefault(row.image, (set(), []))
        box = tuple(int(getattr(row, c)) for c in cols)
        (add.append if row.kind == "missing_box" else drop.add)(box)
    return fixes


def fixed_boxes(boxes: np.ndarray, fix: tuple[set, list] | None) -> np.ndarray:
    """``boxes`` (``(N, 4)``) without the reviewed bad ones and with the missing ones added."""
    if fix is None:
        return boxes
    drop, add = fix
    keep = [b for b in boxes.tolist() if tuple(b) not in drop]
    return np.asarray(keep + [list(b) for b in add], dtype=np.int64).reshape(-1, 4)


def source_crops(source: str, fov_um: float, input_size: int, per_source: int | None = None,
                 fixes: BoxFixes | None = None) -> tuple[np.ndarray, list[str]]:
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
    fixes : dict, optional
        Reviewed box corrections (:func:`reviewed_box_fixes`); the annotated boxes as they
        are when omitted.

    Returns
    -------
    crops : numpy.ndarray
        ``(N, input_size, input_size, 3) uint8``.
    names : list of str
        ``"<image>#<k>"``, the k-th white-cell box of the image (after ``fixes``).

    Raises
    ------
    ValueError
        When the source has no annotated white cell (unknown source name).
    """
    crops, names = [], []
    for field in load_txl_fields(None, sources=(source,), per_source=per_source):
        b = fixed_boxes(field.wbc, (fixes or {}).get(field.image))
        if len(b) == 0:
            continue
        image = field.rgb()
        px = field.rbc_pixel_size() or resolve_pixel_size(image).um
        cells = pd.DataFrame({"min_row": b[:, 0], "min_col": b[:, 1], "max_row": b[:, 2],
                              "max_col": b[:, 3], "centroid_row": (b[:, 0] + b[:, 2]) / 2,
                              "centroid_col": (b[:, 1] + b[:, 3]) / 2})
        crops.append(crop_cells(image, cells, px, out_size=input_size, fov_um=fov_um))
        names += [f"{field.image}#{k}" for k in range(len(b))]
    if not crops:
        raise ValueError(f"TXL-PBC source {source!r} has no annotated white cell")
    return np.concatenate(crops), names


def teacher_proba(model, mean, std, crops: np.ndarray) -> np.ndarray:
    """New-lab reading of one source: Reinhard + AdaBN on the source's crops + 8-view TTA.

    Parameters
    ----------
    model : torch.nn.Module
        The teacher, unfused (AdaBN re-estimates its BatchNorm statistics on a copy).
    mean, std : sequence of float
        The teacher's input normalisation.
    crops : numpy.ndarray
        ``(N, S, S, 3) uint8`` crops of one source (one lab).

    Returns
    -------
    numpy.ndarray
        ``(N, K)`` probabilities of the teacher's classes, in its order. The first recipe
        (``--rank wbc5``) renormalises them over :data:`WBC5`, which forces a cell the teacher
        calls ig, erythroblast or platelet into one of the five with an inflated confidence;
        ``--rank all`` (:func:`wbc5_calls`) does not.
    """
    from benchmarks.cross_source import adapted, predict

    norm = reinhard_normalize(crops)
    return predict(adapted(model, norm, mean, std, adabn=True), norm, mean, std, tta=True)


def wbc5_calls(proba: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """White-cell calls from full-class probabilities, no renormalisation.

    Parameters
    ----------
    proba : numpy.ndarray
        ``(N, len(classes))`` probabilities.
    classes : list of str
        Their columns; must include :data:`WBC5`.

    Returns
    -------
    wbc : numpy.ndarray
        ``(N,)`` bool, the argmax over every class is one of :data:`WBC5`.
    p5 : numpy.ndarray
        ``(N, 5)`` the :data:`WBC5` columns as they are (so ranking by their maximum ranks by
        the probability of the call among all classes).
    """
    p5 = proba[:, [classes.index(c) for c in WBC5]]
    return np.isin(proba.argmax(1), [classes.index(c) for c in WBC5]), p5


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
    ap.add_argument("--teacher", type=Path, nargs="+", required=True,
                    help="package weights (.safetensors) or run folders; several = an "
                         "ensemble (mean of their probabilities)")
    ap.add_argument("--out", type=Path, required=True, help="pack to write (.npz)")
    ap.add_argument("--sources", nargs="+", default=list(DEFAULT_SOURCES),
                    choices=DEFAULT_SOURCES)
    ap.add_argument("--keep", type=float, default=0.6,
                    help="share of each predicted class kept, most confident first")
    ap.add_argument("--fov-um", type=float, default=None,
                    help="field of view of the pack's crops (default: the first teacher's)")
    ap.add_argument("--size", type=int, default=PACK_SIDE,
                    help=f"crop side of the pack, px (default {PACK_SIDE})")
    ap.add_argument("--reviewed", action="store_true",
                    help="apply the reviewed box corrections (drop not_wbc / duplicate "
                         "boxes, add missing ones)")
    ap.add_argument("--rank", choices=("wbc5", "all"), default="wbc5",
                    help="wbc5: renormalise over the five white-cell classes (the first "
                         "recipe); all: drop cells called ig/erythroblast/platelet and rank "
                         "by the probability among all classes")
    ap.add_argument("--lossless", action="store_true",
                    help="store the crops as PNG (as `training.prepare --lossless`), for a "
                         "pack folder cut that way")
    args = ap.parse_args(argv)
    if not 0 < args.keep <= 1:
        ap.error("--keep must be in (0, 1]")
    if (args.out.parent / "cut.json").exists() and read_lossless(args.out.parent) != args.lossless:
        ap.error(f"{args.out.parent} holds {'JPEG' if args.lossless else 'lossless'} crops: "
                 f"{'drop' if args.lossless else 'add'} --lossless")
    os.environ[LOSSLESS_ENV] = "1" if args.lossless else "0"

    teachers = [load_model(t) for t in args.teacher]
    classes = teachers[0].classes
    if any(sorted(t.classes) != sorted(classes) for t in teachers):
        ap.error("the teachers' classes differ")
    fov = args.fov_um or teachers[0].fov_um
    fixes = reviewed_box_fixes() if args.reviewed else None
    all_crops, all_labels, all_names, summary = [], [], [], {}
    for source in args.sources:
        crops, names = source_crops(source, fov, args.size, fixes=fixes)
        # each teacher reads the cells as it was trained to see them; one cut per (fov, side)
        cuts = {(fov, args.size): crops}
        proba = np.zeros((len(crops), len(classes)))
        for model, t_classes, mean, std, t_fov, t_size in teachers:
            if (t_fov, t_size) not in cuts:
                cuts[t_fov, t_size] = source_crops(source, t_fov, t_size, fixes=fixes)[0]
            p = teacher_proba(model, mean, std, cuts[t_fov, t_size])
            proba += p[:, [t_classes.index(c) for c in classes]] / len(teachers)
        called_wbc, p5 = wbc5_calls(proba, classes)
        if args.rank == "all":
            is_wbc = called_wbc
        else:
            p5, is_wbc = p5 / p5.sum(1, keepdims=True), np.ones(len(p5), bool)
        cand = np.flatnonzero(is_wbc)
        kept = cand[keep_confident(p5[cand], args.keep)] if len(cand) else cand
        pred = p5.argmax(1)
        summary[source] = {
            "cells": len(crops), "kept": len(kept), "not_wbc_calls": int((~is_wbc).sum()),
            "predicted": {WBC5[c]: int((pred[is_wbc] == c).sum()) for c in range(len(WBC5))},
            "kept_by_class": {WBC5[c]: int((pred[kept] == c).sum()) for c in range(len(WBC5))},
            # what the ensemble reads every cell as, over all classes, and which white cell the
            # cells called something else resemble most: the split of what `--rank all` drops
            "argmax_all_classes": {c: int((proba.argmax(1) == i).sum())
                                   for i, c in enumerate(classes)},
            "not_wbc_best_wbc5": {WBC5[c]: int((pred[~called_wbc] == c).sum())
                                  for c in range(len(WBC5))},
            "min_kept_confidence": float(p5.max(1)[kept].min()) if len(kept) else None,
        }
        print(source, json.dumps(summary[source]), flush=True)
        all_crops += [encode_crop(crops[i]) for i in kept]
        all_labels += [classes.index(WBC5[pred[i]]) for i in kept]
        all_names += [f"{source}/{names[i]}" for i in kept]
    save_pack(args.out, all_crops, all_labels, classes, all_names)
    summary["teacher"] = [str(t) for t in args.teacher]
    summary["fov_um"] = fov
    summary["keep"] = args.keep
    summary["reviewed"] = args.reviewed
    summary["rank"] = args.rank
    write_json(args.out.with_suffix(".json"), summary)
    return summary


if __name__ == "__main__":
    main()
