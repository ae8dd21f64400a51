"""Accuracy tables: the shipped model live on PBC test and BCCD test fields (end to end), and the
paper-shaped tables (Table 6 ablation, Table 4 ResNet comparison) from the committed training
reports in docs/results (64 px crops: training/gpu_suite.sh; the paper-faithful whole fields at
224 px, when run: training/gpu_paper224.sh, reports in docs/results/paper224).

Usage::

    python -m benchmarks.accuracy [--results docs/results] [--weights MODEL.safetensors]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_ddrnet.classify import Classifier  # noqa: E402
from napari_ddrnet.pipeline import analyze  # noqa: E402
from napari_ddrnet.weights import DEFAULT_WEIGHTS  # noqa: E402
from training.bccd import load_fields  # noqa: E402
from training.detection_eval import box_iou  # noqa: E402
from training.evaluate import metrics  # noqa: E402
from training.paths import data_root, has_dataset  # noqa: E402

from .common import machine, print_table, write_json  # noqa: E402

#: Issue 7's targets, printed beside the figures (the docs' tables use the same ones).
PBC_TARGET = ">= 97.5"
BCCD_FIELDS_TARGET = ">= 90"

PAPER_TABLE6 = [("abl_conv", "Convolution block", 95.37, 84.30),
                ("abl_drdb", "Convolution + DRDB", 96.22, 85.23),
                ("abl_drdb_csab", "Convolution + DRDB + CSAB", 96.48, 86.14),
                ("abl_glfeb", "Convolution + GLFEB", 97.15, 87.56),
                ("abl_glfeb_csab", "Convolution + GLFEB + CSAB", 97.39, 87.98),
                ("abl_drdb_glfeb", "Convolution + DRDB + GLFEB", 98.21, 88.93),
                ("kaggle4_ddrnet", "DDRNet (all blocks)", 99.86, 91.98)]
PAPER_TABLE4 = {"kaggle4_resnet18": ("ResNet-18", "399m17s"),
                "kaggle4_resnet50": ("ResNet-50", "1203m21s"),
                "kaggle4_resnet101": ("ResNet-101", "1678m39s"),
                "kaggle4_ddrnet": ("DDRNet", "161m19s")}


def pbc_test_crops(input_size: int) -> tuple[np.ndarray, np.ndarray]:
    """PBC test crops cut from the dataset images by the plugin's own code (as the single-cell
    mode does), and their class names. Not the training packs: those hold JPEG-recompressed
    crops, which read about a point higher than what a user gets."""
    import csv

    from skimage import io

    from napari_ddrnet.crop import crop_centre

    root = data_root() / "pbc"
    rows = [r for r in csv.DictReader(open(root / "splits.csv", newline=""))
            if r["split"] == "test"]
    crops = np.stack([crop_centre(io.imread(root / r["file"])[..., :3], input_size)
                      for r in rows])
    return crops, np.asarray([r["class"] for r in rows])


def shipped_on_pbc(clf: Classifier) -> dict | None:
    """Metrics of ``clf`` on the PBC test images (live), or ``None`` without the dataset."""
    if not has_dataset("pbc"):
        return None
    crops, names = pbc_test_crops(clf.input_size)
    y = np.asarray([clf.classes.index(n) for n in names])
    return metrics(clf.predict_proba(crops), y, list(clf.classes))


def shipped_on_bccd_fields(clf: Classifier) -> dict:
    """Segment + crop + classify each BCCD test field; its WBC is the detection matching the
    expert box (IoU >= 0.5); a missed cell counts as wrong."""
    y, pred = [], []
    for field in load_fields("test"):
        if not field.wbc_class:
            continue
        res = analyze(field.image(), None, clf, min_confidence=0.0, return_labels=False)
        label = "missed"
        if len(res.cells):
            iou = box_iou(res.cells[["min_row", "min_col", "max_row", "max_col"]].to_numpy(),
                          field.boxes()[:1])[:, 0]
            if iou.max() >= 0.5:
                label = res.cells["class"].iloc[int(iou.argmax())]
        y.append(field.wbc_class)
        pred.append(label)
    y, pred = np.asarray(y), np.asarray(pred)
    per = {c: {"n": int((y == c).sum()), "correct": int(((y == c) & (pred == c)).sum())}
           for c in sorted(set(y))}
    return {"n": len(y), "accuracy": float((y == pred).mean()), "per_class": per,
            "confusions": {f"{a}->{b}": int(((y == a) & (pred == b)).sum())
                           for a in sorted(set(y)) for b in sorted(set(pred)) if a != b
                           and ((y == a) & (pred == b)).any()}}


def _report(results: Path, run: str, test: str) -> tuple[dict, dict] | None:
    ev, sm = results / run / "eval.json", results / run / "summary.json"
    if not ev.exists():
        return None
    summary = json.loads(sm.read_text()) if sm.exists() else {}
    log = results / run / "train.log"
    if "history" not in summary and log.exists():  # a run stopped early: no summary
        summary["history"] = [json.loads(line) for line in log.read_text().splitlines()]
    return json.loads(ev.read_text())[test], summary


def write_card_metrics(weights: Path | None, shipped: dict) -> None:
    """Store the live figures in the weights' card (atomically; the checksum covers only the
    tensors, so the card's figures are generated here, never typed)."""
    from napari_ddrnet.weights import DEFAULT_WEIGHTS, metadata_path

    keep = ("n", "accuracy", "macro_f1", "mcc", "ece")
    live = {"command": "python -m benchmarks.accuracy --write-card"
                       + (f" --weights {weights}" if weights else "")}
    for mode, res in shipped.items():
        if res["pbc_test"]:
            live[f"pbc_test_{'tta' if mode == 'tta' else 'single_pass'}"] = {
                k: res["pbc_test"][k] for k in keep if k in res["pbc_test"]}
        bccd = res["bccd_test_fields"]
        live[f"bccd_test_fields_{'tta' if mode == 'tta' else 'single_pass'}"] = {
            "n": bccd["n"], "accuracy": bccd["accuracy"]}
    card = metadata_path(Path(weights) if weights else DEFAULT_WEIGHTS)
    meta = json.loads(card.read_text())
    meta["metrics_live"] = live
    tmp = card.with_name(card.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(card)
    print(f"wrote metrics_live into {card}")


#: Run names of training/gpu_paper224.sh for the rows of PAPER_TABLE6 / PAPER_TABLE4.
FIELD224_RUNS = {"kaggle4_ddrnet": "ddrnet_bn", "kaggle4_resnet18": "resnet18",
                 "kaggle4_resnet50": "resnet50", "kaggle4_resnet101": "resnet101",
                 "kaggle4_ddrnet_gn": "ddrnet_gn"}
#: Table 4 rows of the 224 px setting only: the paper's own normalisation (GroupNorm).
FIELD224_TABLE4 = {"kaggle4_ddrnet_gn": ("DDRNet, GroupNorm", "161m19s")}


def paper_tables(results: Path, test: str, rename: dict[str, str] | None = None,
                 extra_table4: dict[str, tuple[str, str]] | None = None
                 ) -> tuple[list[dict], list[dict]]:
    """Table 6 (ablation) and Table 4 (ResNets) rows from the training reports in ``results``.

    ``rename`` maps the 64 px run names to the runs' names in ``results``. Where a run has a
    ``<run>_recal`` report (BatchNorm statistics re-estimated on clean training data) its
    accuracy is a column of its own.
    """
    rename = rename or {}

    def report(run: str):
        r = _report(results, rename.get(run, run), test)
        recal = _report(results, rename.get(run, run) + "_recal", test)
        extra = {"ours_test_recal_%": round(100 * recal[0]["accuracy"], 2)} if recal else {}
        return r, extra

    t6 = []
    for run, name, p_train, p_test in PAPER_TABLE6:
        r, extra = report(run)
        if r is None:
            continue
        ev, sm = r
        t6.append({"blocks": name, "paper_train_%": p_train, "paper_test_%": p_test,
                   "epochs": len(sm["history"]),
                   "ours_train_%": round(100 * sm["history"][-1]["train_acc"], 2),
                   "ours_test_%": round(100 * ev["accuracy"], 2), **extra,
                   "ours_macro_F1_%": round(100 * ev["macro_f1"], 2)})
    t4 = []
    for run, (name, paper_time) in {**PAPER_TABLE4, **(extra_table4 or {})}.items():
        r, extra = report(run)
        if r is None:
            continue
        ev, sm = r
        pc = ev["per_class"].values()
        t4.append({"model": name, "MCC": round(ev["mcc"], 4),
                   "recall": round(float(np.mean([m["recall"] for m in pc])), 4),
                   "precision": round(float(np.mean([m["precision"] for m in pc])), 4),
                   "F1": round(ev["macro_f1"], 4), "accuracy_%": round(100 * ev["accuracy"], 2),
                   **extra, "train_time_s": round(sm.get("train_time_s", float("nan")), 0),
                   "paper_time": paper_time})
    return t6, t4


def _print_paper_tables(t6: list[dict], t4: list[dict], setting: str) -> None:
    if t6:
        print(f"\nTable 6 shape: ablation on Kaggle TEST (4 classes; {setting})")
        print_table(t6, list(t6[0]))
    if t4:
        print(f"\nTable 4 shape: ResNets vs DDRNet on Kaggle TEST, same data and schedule "
              f"({setting})")
        print_table(t4, list(t4[0]))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "results")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", type=Path, default=None,
                    help="evaluate these weights instead of the shipped ones (no tables; "
                         "writes accuracy_<name>.json)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--write-card", action="store_true",
                    help="record these live figures as `metrics_live` in the weights' JSON card "
                         "(what tests/test_accuracy.py checks against)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    payload: dict = {"machine": machine(), "shipped": {}}
    print(f"Model {args.weights or f'shipped ({DEFAULT_WEIGHTS.name})'}"
          ", live on this CPU")
    rows = []
    for tta in (True, False):
        clf = Classifier(args.weights, device="cpu", tta=tta)
        mode = "8-view TTA (default)" if tta else "single pass"
        pbc = shipped_on_pbc(clf)
        bccd = shipped_on_bccd_fields(clf)
        payload["shipped"]["tta" if tta else "single"] = {"pbc_test": pbc,
                                                          "bccd_test_fields": bccd}
        if pbc:
            rows.append({"test set": "PBC test (3,415 crops)", "mode": mode,
                         "accuracy_%": round(100 * pbc["accuracy"], 2),
                         "macro_F1_%": round(100 * pbc["macro_f1"], 2),
                         "target": PBC_TARGET})
        rows.append({"test set": f"BCCD test fields end to end ({bccd['n']})", "mode": mode,
                     "accuracy_%": round(100 * bccd["accuracy"], 2), "macro_F1_%": "",
                     "target": BCCD_FIELDS_TARGET})
        if tta:
            confusions = bccd["confusions"]
    print_table(rows, ["test set", "mode", "accuracy_%", "macro_F1_%", "target"])
    print("BCCD confusions (TTA):", confusions)
    if args.write_card:
        write_card_metrics(args.weights, payload["shipped"])
    if args.weights:  # a candidate: its figures only, beside the shipped ones' JSON
        write_json(args.out / f"accuracy_{args.weights.stem}.json", payload)
        return payload

    t6, t4 = paper_tables(args.results, "kaggle_test")
    _print_paper_tables(t6, t4, "64 px crops of the detected cell")
    # The paper-faithful setting at full size (training/gpu_paper224.sh), when it has run.
    t6f, t4f = paper_tables(args.results / "paper224", "kaggle_field224_test",
                            FIELD224_RUNS, FIELD224_TABLE4)
    _print_paper_tables(t6f, t4f, "whole fields at 224 px, the paper's schedule")
    pbc_rows = []
    for run in ("pbc8_ddrnet", "pbc8_resnet18", "pbc8_ddrnet_e60", "pbc8_resnet18_e60"):
        for test in ("pbc_test", "bccd_test"):
            r = _report(args.results, run, test)
            if r:
                pbc_rows.append({"run": run, "test": test,
                                 "accuracy_%": round(100 * r[0]["accuracy"], 2),
                                 "macro_F1_%": round(100 * r[0]["macro_f1"], 2),
                                 "ECE": round(r[0]["ece"], 4)})
    if pbc_rows:
        print("\n8-class models, identical training, single pass "
              "(bccd_test = crop of the detection matching the expert box)")
        print_table(pbc_rows, list(pbc_rows[0]))
    payload.update({"table6": t6, "table4": t4, "table6_field224": t6f,
                    "table4_field224": t4f, "pbc8": pbc_rows})
    write_json(args.out / "accuracy.json", payload)
    return payload


if __name__ == "__main__":
    main()
