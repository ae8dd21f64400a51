"""Evaluate a trained run on test packs: accuracy, per-class precision/recall/F1/MCC,
macro-F1, confusion matrix (CSV + PNG) and expected calibration error, as JSON + Markdown.

Usage::

    python -m training.evaluate --run runs/pbc8_ddrnet --packs packs --test pbc_test bccd_test
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    precision_recall_fscore_support,
)

from .models import build_model
from .packs import check_cut
from .train import load_split, pick_device, predict


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width top-1 confidence bins (Guo et al. 2017), by torchmetrics."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    return float(multiclass_calibration_error(
        torch.as_tensor(probs, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long),
        num_classes=probs.shape[1], n_bins=bins, norm="l1"))


def metrics(probs: np.ndarray, y: np.ndarray, classes: list[str]) -> dict:
    """All reported metrics for one test set (scikit-learn implementations)."""
    pred = probs.argmax(1)
    labels = list(range(len(classes)))
    present = sorted(set(y.tolist()))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    per_class = {}
    for i, c in enumerate(classes):
        yb, pb = (y == i), (pred == i)
        per_class[c] = {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                        "mcc": float(matthews_corrcoef(yb, pb)) if yb.any() else None,
                        "support": int(s[i])}
    return {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
        "mcc": float(matthews_corrcoef(y, pred)),
        "ece": expected_calibration_error(probs, y),
        "per_class": per_class,
        "confusion": confusion_matrix(y, pred, labels=labels).tolist(),
    }


def save_confusion(cm: list[list[int]], classes: list[str], stem: Path, title: str) -> None:
    """Write the confusion matrix as CSV and PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm_a = np.asarray(cm)
    with open(stem.with_suffix(".csv"), "w") as fh:
        fh.write("true\\pred," + ",".join(classes) + "\n")
        for c, row in zip(classes, cm_a):
            fh.write(c + "," + ",".join(str(int(v)) for v in row) + "\n")
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(classes), 0.8 + 0.6 * len(classes)))
    ax.imshow(cm_a / np.maximum(cm_a.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(cm_a[i, j]), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(fig)


def markdown(name: str, res: dict) -> str:
    lines = [f"### {name}", "",
             f"n = {res['n']}, accuracy **{100 * res['accuracy']:.2f} %**, macro-F1 "
             f"**{100 * res['macro_f1']:.2f} %**, MCC {res['mcc']:.4f}, ECE {res['ece']:.4f}", "",
             "| class | precision | recall | F1 | MCC | support |", "|---|---|---|---|---|---|"]
    for c, m in res["per_class"].items():
        if m["support"] == 0:
            continue
        lines.append(f"| {c} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | "
                     f"{m['mcc']:.4f} | {m['support']} |")
    return "\n".join(lines) + "\n"


def load_run_model(run: Path, device: torch.device):
    meta = json.loads((run / "meta.json").read_text())
    model = build_model(meta["arch"], len(meta["classes"]), meta.get("ddrnet"))
    model.load_state_dict(torch.load(run / "best.pt", map_location=device, weights_only=True))
    return model.to(device).eval(), meta


def evaluate_run(run: Path, packs: Path, tests: list[str], device_name: str = "auto") -> dict:
    """Evaluate ``run``'s best checkpoint on each test pack; writes ``eval.json``/``eval.md``."""
    device = pick_device(device_name)
    model, meta = load_run_model(run, device)
    check_cut(packs, meta)
    classes = meta["classes"]
    results, md = {}, [f"## {run.name}", ""]
    for t in tests:
        x, y, cls = load_split(packs, [t])
        if cls != classes:
            y = np.asarray([classes.index(cls[i]) for i in y])
        probs = predict(model, torch.from_numpy(x), device, amp=device.type == "cuda")
        res = metrics(probs, y, classes)
        results[t] = res
        save_confusion(res["confusion"], classes, run / f"confusion_{t}", f"{run.name} on {t}")
        md.append(markdown(t, res))
    (run / "eval.json").write_text(json.dumps(results, indent=1))
    (run / "eval.md").write_text("\n".join(md))
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Evaluate a training run on test packs.")
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--packs", type=Path, default=Path("packs"))
    ap.add_argument("--test", nargs="+", required=True)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    res = evaluate_run(args.run, args.packs, args.test, args.device)
    for t, r in res.items():
        print(f"{t}: accuracy {r['accuracy']:.4f} macro-F1 {r['macro_f1']:.4f} ECE {r['ece']:.4f}")


if __name__ == "__main__":
    main()
