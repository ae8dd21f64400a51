"""The "unlike the training data" card, read back by the plugin's own verdict code on crops the
plugin itself cuts from TXL-PBC images (the fourteenth session's gate, ``docs/cross-source.md``).

Per source, every image goes through the plugin's path for its kind: ``bccd``, ``raabin`` and
``bcd`` fields through :func:`napari_ddrnet.pipeline.analyze` (pixel size resolved as ``count``
resolves it), ``pbc`` single-cell exports through
:func:`napari_ddrnet.single_cell.prepare_single_cell` (as ``count --single-cell``). Each crop's
BatchNorm-input channel means are computed once; a run of 32 cells is then a random draw of 32
crops, judged by :func:`napari_ddrnet.shift_score.verdict_from_sums` with the card the weights
carry (its reference, layers and threshold). The gate: each source of the labelled training labs
(``bccd``, ``pbc``) warns on at most 5 % of 200 draws; ``raabin`` and ``bcd`` are reported.

Reported too (added after the gate was met, deciding nothing): how often a widget session sees
the warning at least once. The widget judges each image together with the images just before it
until 32 cells (:class:`napari_ddrnet.shift_score.RecentRuns`), so one session of 50 images in
random order gives up to 50 overlapping verdicts; the share of 200 such sessions with any
warning.

Usage::

    python -m benchmarks.shift_gate --weights W.safetensors [--sources bccd pbc raabin bcd]

Writes ``benchmarks/results/shift_gate_<weights>.{json,log}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_ddrnet.classify import Classifier  # noqa: E402
from napari_ddrnet.pipeline import analyze  # noqa: E402
from napari_ddrnet.shift_score import (  # noqa: E402
    SHIFT_MIN_CROPS,
    crop_rows,
    verdict_from_sums,
)
from napari_ddrnet.single_cell import prepare_single_cell  # noqa: E402
from napari_ddrnet.weights import DEFAULT_WEIGHTS  # noqa: E402
from training.detection_eval import load_txl_fields  # noqa: E402

from .common import machine, write_json  # noqa: E402

#: Sources of the labelled training labs: the gate. The others are reported.
GATE = ("bccd", "pbc")
SINGLE_CELL = ("pbc",)
MAX_WARN_SHARE = 0.05
DRAWS = 200


#: A widget session: images analysed one after another (reported, not gated).
SESSION_IMAGES = 50


def source_crops(source: str, classifier: Classifier) -> tuple[np.ndarray, np.ndarray, int]:
    """uint8 crops the plugin cuts from every TXL-PBC image of ``source``, the index of the
    image each crop comes from, and how many images the source has."""
    fields = load_txl_fields(None, (source,))
    out, image = [], []
    for i, field in enumerate(fields):
        rgb = field.rgb()
        if source in SINGLE_CELL:
            out.append(prepare_single_cell(rgb, classifier.input_size).crop[None])
        else:
            res = analyze(rgb, classifier=classifier, keep_crops=True, return_labels=False)
            if res.crops is None or not len(res.crops):
                continue
            out.append(res.crops)
        image += [i] * len(out[-1])
    size = classifier.input_size
    crops = np.concatenate(out) if out else np.zeros((0, size, size, 3), np.uint8)
    return crops, np.asarray(image, np.int64), len(fields)


def session_warns(bundle, rows: torch.Tensor, image: np.ndarray, rng: np.random.Generator,
                  n_images: int = SESSION_IMAGES) -> bool:
    """Whether a widget session of ``n_images`` random images (with cells) warns at least once:
    after each image, the verdict on it and the images just before it, newest first, until
    :data:`SHIFT_MIN_CROPS` cells (as :class:`~napari_ddrnet.shift_score.RecentRuns` pools)."""
    ids = np.unique(image)
    order = rng.permutation(ids)[:n_images]
    per_image = {int(i): rows[torch.as_tensor(np.flatnonzero(image == i))] for i in order}
    for k in range(len(order)):
        pooled, cells = [], 0
        for j in order[k::-1]:
            if cells >= SHIFT_MIN_CROPS:
                break
            pooled.append(per_image[int(j)])
            cells += len(per_image[int(j)])
        if cells < SHIFT_MIN_CROPS:
            continue
        v = verdict_from_sums(bundle, torch.cat(pooled).sum(0).numpy(), cells)
        if v is not None and v.warns:
            return True
    return False


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    ap.add_argument("--sources", nargs="+", default=["bccd", "pbc", "raabin", "bcd"])
    ap.add_argument("--draws", type=int, default=DRAWS)
    ap.add_argument("--sessions", type=int, default=DRAWS,
                    help="random widget sessions of 50 images per source (0: none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    classifier = Classifier(args.weights, device="cpu", tta=False)
    bundle = classifier.bundle
    card = bundle.meta.get("shift_warning")
    if not card:
        raise SystemExit(f"{args.weights} carries no shift_warning card to check")
    name = Path(args.weights).stem
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    log(f"weights {name}; card: reference {card.get('reference', 'running')}, layers "
        f"{card.get('layers') or 'all'}, threshold {card['threshold']:.4f}")
    log(f"{args.draws} draws of {SHIFT_MIN_CROPS} crops per source; gate: sources "
        f"{', '.join(GATE)} warn on <= {100 * MAX_WARN_SHARE:.0f} % of draws")
    log(f"{'source':<8}{'images':>7}{'crops':>7}{'whole':>8}{'min':>8}{'median':>8}"
        f"{'max':>8}{'warn %':>8}{'sessions %':>11}  role")
    results: dict[str, dict] = {}
    for i, source in enumerate(args.sources):
        crops, image, n_images = source_crops(source, classifier)
        rows = crop_rows(bundle, crops)
        if rows is None:  # a source with no crops: nothing to judge
            rows = torch.zeros((0, 0), dtype=torch.float64)
        whole = verdict_from_sums(bundle, rows.sum(0).numpy(), len(rows))
        rng = np.random.default_rng(i)
        scores = []
        for _ in range(args.draws if len(rows) >= SHIFT_MIN_CROPS else 0):
            idx = rng.choice(len(rows), SHIFT_MIN_CROPS, replace=False)
            scores.append(verdict_from_sums(bundle, rows[idx].sum(0).numpy(),
                                            SHIFT_MIN_CROPS).score)
        d = np.asarray(scores)
        share = float((d > card["threshold"]).mean()) if len(d) else float("nan")
        srng = np.random.default_rng(100 + i)
        sessions = (float(np.mean([session_warns(bundle, rows, image, srng)
                                   for _ in range(args.sessions)]))
                    if args.sessions and len(rows) else float("nan"))
        role = "gate" if source in GATE else "reported"
        results[source] = {"images": n_images, "crops": int(len(rows)),
                           "whole": whole.score if whole else None,
                           "whole_warns": bool(whole.warns) if whole else None,
                           "draws_min": float(d.min()) if len(d) else None,
                           "draws_median": float(np.median(d)) if len(d) else None,
                           "draws_max": float(d.max()) if len(d) else None,
                           "warn_share": share, "sessions_warned": sessions, "role": role}
        r = results[source]
        log(f"{source:<8}{n_images:>7}{len(rows):>7}"
            + (f"{r['whole']:>8.3f}" if whole else f"{'-':>8}")
            + (f"{r['draws_min']:>8.3f}{r['draws_median']:>8.3f}{r['draws_max']:>8.3f}"
               if len(d) else f"{'-':>8}{'-':>8}{'-':>8}")
            + f"{100 * share:>7.1f}%{100 * sessions:>10.1f}%  {role}")
    gated = [s for s in GATE if s in results]
    passed = bool(gated) and all(results[s]["warn_share"] <= MAX_WARN_SHARE for s in gated)
    log(f"gate ({', '.join(gated)} <= {100 * MAX_WARN_SHARE:.0f} % of draws): "
        f"{'met' if passed else 'NOT met'}  ({time.time() - t0:.0f} s)")
    payload = {"weights": name, "card": {k: v for k, v in card.items() if k != "labs"},
               "draws": args.draws, "sessions": args.sessions,
               "session_images": SESSION_IMAGES, "gate": list(GATE),
               "max_warn_share": MAX_WARN_SHARE,
               "passed": passed, "sources": results, "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"shift_gate_{name}.json", payload)
    (args.out / f"shift_gate_{name}.log").write_text("\n".join(lines) + "\n")
    return payload


if __name__ == "__main__":
    main()
