"""Export a trained DDRNet run as package weights (safetensors + JSON metadata with sha256).

Usage::

    python -m training.export --run runs/NAME --out src/napari_ddrnet/weights/NAME.safetensors \
        [--config training/configs/NAME.json] [--extra training/configs/NAME_card.json] \
        [--benchmark benchmarks/results/cross_source_NAME.json]
    python -m training.export --card-only --out src/napari_ddrnet/weights/NAME.safetensors \
        --benchmark benchmarks/results/cross_source_NAME.json

Every number in the card is copied from machine output — the run's ``summary.json`` (training,
selection score and epoch), its ``eval.json`` (``training.evaluate``, single pass) and, with
``--benchmark``, the ``benchmarks.cross_source`` JSON (TTA, AdaBN, Reinhard, other sources,
BCCD fields end to end). ``--card-only`` replaces just the card's benchmark metrics of weights
already exported (a benchmark rerun on re-cut packs, the run folder no longer at hand); the
tensors and their checksum are untouched. The ``--extra`` JSON carries prose only (data
description, intended use): metric keys there are refused, so no metric is ever typed by hand
again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from napari_ddrnet.crop import INPUT_SIZE
from napari_ddrnet.model import DDRNetConfig
from napari_ddrnet.preprocess import MEAN, STD
from napari_ddrnet.weights import export_weights

from .packs import LEGACY_FOV_UM

METRIC_KEYS = ("n", "accuracy", "macro_f1", "mcc", "ece")


def selected_epoch(summary: dict) -> dict | None:
    """The epoch whose checkpoint is ``best.pt``: the best validation score among the
    selectable epochs (first maximum, as ``training.train`` keeps it), else the last epoch."""
    hist = summary.get("history") or []
    if not hist:
        return None
    after = int((summary.get("config") or {}).get("select_after_epoch", 1))
    cand = [h for h in hist if "val_macro_f1" in h and h["epoch"] >= after]
    if not cand:
        return {"epoch": hist[-1]["epoch"]}
    best = max(cand, key=lambda h: h["val_macro_f1"])  # max keeps the first of equal scores
    return {k: v for k, v in best.items() if k == "epoch" or k.startswith("val_")}


def benchmark_metrics(bench: dict) -> dict:
    """Compact metrics from a ``benchmarks.cross_source`` JSON: per source and mode, the
    accuracy (restricted to the source's classes where it has fewer) and macro-F1."""
    out: dict = {"source": "benchmarks/cross_source.py", "lisc_side_px": bench.get("lisc_side_px")}
    for src, modes in bench.get("results", {}).items():
        out[src] = {}
        for mode, r in modes.items():
            m = {"n": r["n"], "accuracy": round(r.get("accuracy_restricted",
                                                      r["accuracy_plain"]), 4),
                 "macro_f1": round(r["macro_f1"], 4)}
            if "accuracy_restricted" in r:
                m["accuracy_plain_argmax"] = round(r["accuracy_plain"], 4)
            out[src][mode] = m
    for mode, r in (bench.get("bccd_fields") or {}).items():
        out.setdefault("bccd_test_fields_end_to_end", {})[mode] = {
            "n": r["n"], "accuracy": round(r["accuracy"], 4)}
    return out


def export_run(run: Path, out: Path, extra: dict | None = None, config: Path | None = None,
               benchmark: dict | None = None) -> dict:
    """Write the run's best checkpoint and metadata to ``out``; returns the metadata."""
    if extra and any(k.startswith("metrics") for k in extra):
        raise ValueError("metrics come from eval/benchmark output, not from --extra: "
                         f"remove {[k for k in extra if k.startswith('metrics')]}")
    meta_run = json.loads((run / "meta.json").read_text())
    if meta_run["arch"] != "ddrnet":
        raise ValueError("only DDRNet runs can be shipped")
    state = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    cfg = DDRNetConfig(num_classes=len(meta_run["classes"]), **meta_run.get("ddrnet", {}))
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() \
        else {}
    evals = json.loads((run / "eval.json").read_text()) if (run / "eval.json").exists() else {}
    cfg_arg = str(config) if config else "training/configs/<config>.json"
    meta = {
        "name": out.stem,
        "architecture": "DDRNet",
        "classes": meta_run["classes"],
        # The crop side its packs were cut at (runs from before it was recorded: 64 px).
        "input_size": int(meta_run.get("input_size", INPUT_SIZE)),
        # The field of view its packs were cut at (runs from before it was recorded: 30 µm).
        "crop_fov_um": float(meta_run.get("crop_fov_um", LEGACY_FOV_UM)),
        "mean": list(MEAN),
        "std": list(STD),
        "config": cfg.to_dict(),
        "training": {k: summary.get(k) for k in ("config", "epochs", "n_train", "train_time_s",
                                                  "device", "best_val_macro_f1")},
        "selected": selected_epoch(summary),
        **({"recalibration": summary["recalibration"]} if "recalibration" in summary else {}),
        "metrics": {t: {k: r[k] for k in METRIC_KEYS} for t, r in evals.items()},
        "reproduce": [
            "python -m training.prepare --out packs",
            f"python -m training.train --config {cfg_arg} --out {run}",
            f"python -m training.evaluate --run {run} --test {' '.join(evals) or 'pbc_test'}",
            f"python -m benchmarks.cross_source --weights {out} --bccd-fields",
            f"python -m training.export --run {run} --out {out} --config {cfg_arg} "
            "--benchmark benchmarks/results/cross_source_<name>.json",
        ],
        **(extra or {}),
    }
    if "reproduce_steps" in meta:
        # A card with its own exact steps (e.g. a pseudo-label step) replaces the generic ones.
        meta.pop("reproduce")
    if benchmark is not None:
        meta["metrics_benchmark"] = benchmark_metrics(benchmark)
    return export_weights(state, meta, out)


def update_card(weights: Path, key: str, value) -> dict:
    """Set ``key`` in the card of exported ``weights`` (atomically).

    The sha256 covers the tensors only, so they stay valid; every other card field is kept.
    """
    from napari_ddrnet.weights import metadata_path

    card = metadata_path(weights)
    meta = json.loads(card.read_text())
    meta[key] = value
    tmp = card.with_name(card.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(card)
    return meta


def refresh_card_benchmark(weights: Path, bench: dict) -> dict:
    """Replace ``metrics_benchmark`` in the card of exported ``weights`` (:func:`update_card`)."""
    return update_card(weights, "metrics_benchmark", benchmark_metrics(bench))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Export a DDRNet run as package weights.")
    ap.add_argument("--run", type=Path, help="the run folder (not with --card-only)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", type=Path, help="the training config (for the reproduce lines)")
    ap.add_argument("--extra", type=Path, help="JSON of prose fields merged into the metadata")
    ap.add_argument("--benchmark", type=Path,
                    help="benchmarks.cross_source JSON whose metrics go into the card")
    ap.add_argument("--card-only", action="store_true",
                    help="only replace the benchmark metrics in the card of --out")
    args = ap.parse_args(argv)
    if args.card_only:
        if args.benchmark is None or args.run is not None:
            ap.error("--card-only takes --out and --benchmark, and no --run")
        refresh_card_benchmark(args.out, json.loads(args.benchmark.read_text()))
        print(f"wrote metrics_benchmark into the card of {args.out}")
        return
    if args.run is None:
        ap.error("--run is required")
    extra = json.loads(args.extra.read_text()) if args.extra else None
    bench = json.loads(args.benchmark.read_text()) if args.benchmark else None
    meta = export_run(args.run, args.out, extra, args.config, bench)
    print(f"wrote {args.out} sha256={meta['sha256']}")


if __name__ == "__main__":
    main()
