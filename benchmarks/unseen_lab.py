"""The unseen lab through the plugin itself: LISC via ``napari-ddrnet count --single-cell``.

Usage::

    python -m benchmarks.unseen_lab [--weights MODEL.safetensors] [--out benchmarks/results]

Runs the command-line tool a user would run on a folder of single-cell exports (all 1,287 LISC
crops, a lab never trained or selected on), once as is and once with ``--new-lab``, and scores
the CELLS.csv it writes: plain accuracy (the class column, 8-class argmax with
``--min-confidence 0``) and accuracy restricted to LISC's 5 classes (argmax of their
``prob_*`` columns), overall, per class, and per cell group (crops of one cell joined); and
what a user sees at the default ``--min-confidence`` (0.5): the share right and the share
``unidentified`` (computed from the same probabilities).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_ddrnet import cli  # noqa: E402
from napari_ddrnet.classes import DEFAULT_MIN_CONFIDENCE  # noqa: E402
from training.paths import data_root  # noqa: E402

from .common import machine, print_table, write_json  # noqa: E402


def score(cells: pd.DataFrame, labels: pd.DataFrame) -> dict:
    """Plain and 5-class accuracy of a CELLS.csv against LISC's labels."""
    df = cells.assign(file=[str(Path(p).relative_to(data_root() / "lisc"))
                            for p in cells["image"]]).merge(labels, on="file")
    classes = sorted(labels["class"].unique())
    probs = df[[f"prob_{c}" for c in classes]].to_numpy()
    restricted = np.asarray(classes)[probs.argmax(1)]
    right5 = restricted == df["class_y"].to_numpy()
    right = df["class_x"].to_numpy() == df["class_y"].to_numpy()
    per_class = {c: round(float(right5[df["class_y"] == c].mean()), 4) for c in classes}
    groups = pd.Series(right5).groupby(df["cell_group"].to_numpy()).mean()
    # At the default minimum confidence a cell whose top probability (over all the model's
    # classes) is lower is "unidentified": right only if its top class is and it is kept.
    all_probs = df[[c for c in df.columns if c.startswith("prob_")]].to_numpy()
    kept = all_probs.max(1) >= DEFAULT_MIN_CONFIDENCE
    return {"n": len(df), "accuracy_5class": float(right5.mean()),
            "accuracy_plain": float(right.mean()), "per_class_5class": per_class,
            "per_group_mean_5class": float(groups.mean()),
            "accuracy_default_confidence": float((right & kept).mean()),
            "unidentified_default_confidence": float((~kept).mean())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    root = data_root() / "lisc"
    labels = pd.DataFrame(list(csv.DictReader(open(root / "labels.csv", newline=""))))
    files = [str(root / f) for f in labels["file"]]
    rows, payload = [], {"machine": machine(), "weights": str(args.weights or "shipped")}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, flags in (("as is", []), ("--new-lab", ["--new-lab"])):
            cells_csv = Path(tmp) / "cells.csv"
            extra = ["--weights", str(args.weights)] if args.weights else []
            t = time.perf_counter()
            rc = cli.main(["count", "--single-cell", *files, "--cells-csv", str(cells_csv),
                           "--counts-csv", str(Path(tmp) / "counts.csv"), "--device", "cpu",
                           "--min-confidence", "0", "--quiet", *flags, *extra])
            seconds = time.perf_counter() - t
            res = score(pd.read_csv(cells_csv), labels) | {"rc": rc, "seconds": seconds}
            payload[mode] = res
            rows.append({"mode": mode, "cells": res["n"],
                         "5-class_%": round(100 * res["accuracy_5class"], 2),
                         "plain_8-class_%": round(100 * res["accuracy_plain"], 2),
                         "per_cell_group_%": round(100 * res["per_group_mean_5class"], 2),
                         "right_at_min_conf_0.5_%":
                             round(100 * res["accuracy_default_confidence"], 2),
                         "unidentified_at_0.5_%":
                             round(100 * res["unidentified_default_confidence"], 2),
                         "seconds": round(seconds, 1)})
            print(mode, "per class (5-class):", res["per_class_5class"], flush=True)
    print("LISC (never trained, tuned or selected on) through `napari-ddrnet count "
          "--single-cell`")
    print_table(rows, list(rows[0]))
    write_json(args.out / "unseen_lab.json", payload)
    return payload


if __name__ == "__main__":
    main()
