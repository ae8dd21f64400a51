"""Uniform weight soup of fine-tunes that share one initialisation (Wortsman et al. 2022).

``theta = mean_i theta_i`` for every floating-point tensor. Fine-tunes of one base lie in one
basin, so their average is a single network (no extra inference cost) that is often a little
more accurate than its best ingredient. BatchNorm running statistics are averaged too, but an
average of statistics is not the statistics of the averaged network: re-estimate them
afterwards with :mod:`training.recalibrate`.

Usage::

    python -m training.soup --runs runs/a runs/b runs/c --out runs/soup

Writes a run folder (``best.pt``, ``meta.json``, ``summary.json``) that
``training.recalibrate``, ``training.evaluate`` and ``training.export`` read like any other run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .wise import load_state


def average(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of float tensors; integer buffers (BatchNorm's
    ``num_batches_tracked``) are taken from the first state.

    Raises
    ------
    ValueError
        If fewer than two states are given, or they do not have the same tensors and shapes.
    """
    if len(states) < 2:
        raise ValueError("a soup needs at least two models")
    first = states[0]
    for s in states[1:]:
        if s.keys() != first.keys() or any(s[k].shape != first[k].shape for k in first):
            raise ValueError("the models do not have the same tensors")
    out = {}
    for k, v in first.items():
        if v.is_floating_point():
            out[k] = torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True,
                    help="run folders of the ingredients (their best.pt and meta.json)")
    ap.add_argument("--out", type=Path, required=True, help="run folder to write")
    args = ap.parse_args(argv)
    metas = [json.loads((r / "meta.json").read_text()) for r in args.runs]
    if any(m != metas[0] for m in metas[1:]):
        raise SystemExit("the runs differ in meta.json (classes, architecture or crop)")
    state = average([load_state(r) for r in args.runs])
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out / "best.pt")
    (args.out / "meta.json").write_text(json.dumps(metas[0], indent=1))
    rec = {"soup_of": [str(r) for r in args.runs]}
    summary = {"config": {"soup": rec}, "classes": metas[0]["classes"], "history": [],
               "device": "cpu"}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
