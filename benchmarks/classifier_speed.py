"""Classifier throughput: DDRNet vs torchvision ResNet-18/50 at the same input size.

Usage::

    python -m benchmarks.classifier_speed [--size 64] [--threads 2] [--out benchmarks/results]

Prints crops/s for batch sizes 1/32/64/256 on the CPU (``--threads`` threads) and, when CUDA
is present, on the GPU in fp32, fp16 and bf16. Params and MACs (multiply-accumulates, counted by
torch's FLOP counter) per crop.

This machine is shared and noisy, and load that comes and goes would move a ratio between
models timed one after another. So the models are *interleaved*: ``--rounds`` rounds, each
timing every model once in a shuffled order on the same block of crops; each round gives its
own DDRNet/ResNet-18 ratio, and the table reports the median ratio with its min-max spread.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from napari_ddrnet.model import DDRNet, DDRNetConfig, count_parameters, fuse_for_inference

from .common import machine, print_table, write_json


def macs(model: torch.nn.Module, size: int) -> int:
    model.eval()
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        model(torch.randn(1, 3, size, size))
    return fc.get_total_flops() // 2


def models(num_classes: int = 8) -> dict:
    def bn(**kw):
        return fuse_for_inference(DDRNet(DDRNetConfig(num_classes=num_classes, norm="batch", **kw)))

    return {
        "ddrnet": bn(),
        # the per-crop colour standardisations of issue 7 (part of the network, so timed here)
        "ddrnet_cropnorm": bn(input_norm="crop"),
        "ddrnet_croplab": bn(input_norm="crop_lab"),
        "ddrnet_gn": DDRNet(DDRNetConfig(num_classes=num_classes, norm="group")).eval(),
        "resnet18": torchvision.models.resnet18(num_classes=num_classes).eval(),
        "resnet50": torchvision.models.resnet50(num_classes=num_classes).eval(),
    }


def _runner(model, size: int, batch: int, device: str, dtype, crops: int):
    """A closure that pushes ``crops`` crops through ``model`` in batches of ``batch``."""
    model = model.to(device).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last)
    iters = max(1, crops // batch)

    def run() -> int:
        with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=dtype,
                                                    enabled=dtype is not None):
            for _ in range(iters):
                model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return batch * iters

    return run


def interleaved(ms: dict, size: int, batch: int, device: str, dtype, crops: int,
                rounds: int, seed: int = 0) -> dict[str, list[float]]:
    """crops/s of every model in each of ``rounds`` rounds, models shuffled within a round."""
    runs = {n: _runner(m, size, batch, device, dtype, crops) for n, m in ms.items()}
    for run in runs.values():  # warm-up (allocator, oneDNN kernels, cudnn autotune)
        run()
    rng = random.Random(seed)
    rates: dict[str, list[float]] = {n: [] for n in ms}
    for _ in range(rounds):
        order = list(runs)
        rng.shuffle(order)
        for n in order:
            t = time.perf_counter()
            done = runs[n]()
            rates[n].append(done / (time.perf_counter() - t))
    return rates


def summarise(rates: dict[str, list[float]], base: str = "resnet18") -> dict[str, dict]:
    """Median crops/s and the median, min and max of the per-round ratio to ``base``."""
    out = {}
    for n, r in rates.items():
        ratios = [a / b for a, b in zip(r, rates[base])]
        out[n] = {"crops_per_s": round(statistics.median(r), 1),
                  "ratio_vs_resnet18": round(statistics.median(ratios), 2),
                  "ratio_min": round(min(ratios), 2), "ratio_max": round(max(ratios), 2)}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32, 64, 256])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--cpu-models", nargs="+", default=["ddrnet", "ddrnet_gn", "resnet18",
                                                        "resnet50"])
    ap.add_argument("--no-cpu", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    ms = models()
    info = {n: {"params": count_parameters(m), "macs": macs(m, args.size)} for n, m in ms.items()}
    rows = []
    targets = [] if args.no_cpu else [("cpu", None, "fp32")]
    if torch.cuda.is_available():
        targets += [("cuda", None, "fp32"), ("cuda", torch.float16, "fp16"),
                    ("cuda", torch.bfloat16, "bf16")]
    for device, dtype, dname in targets:
        for b in args.batches:
            sel = {n: m for n, m in ms.items() if device != "cpu" or n in args.cpu_models}
            crops = (32 if b == 1 else max(256, b)) if device == "cpu" else (64 if b == 1
                                                                             else 4096)
            res = summarise(interleaved(sel, args.size, b, device, dtype, crops, args.rounds))
            for name, v in res.items():
                print(f"{device} {dname} batch {b} {name}: {v['crops_per_s']:.1f} crops/s, "
                      f"x{v['ratio_vs_resnet18']} ResNet-18 "
                      f"[{v['ratio_min']}-{v['ratio_max']}]", flush=True)
                rows.append({"device": device, "dtype": dname, "batch": b, "model": name, **v})
    table_info = [{"model": n, **v, "mmacs": round(v["macs"] / 1e6, 1)} for n, v in info.items()]
    print(f"input {args.size}x{args.size}, CPU threads {args.threads}, {args.rounds} interleaved "
          "rounds (ratio = median of per-round ratios, [min-max])")
    print_table(table_info, ["model", "params", "mmacs"])
    print()
    print_table(rows, ["device", "dtype", "batch", "model", "crops_per_s", "ratio_vs_resnet18",
                       "ratio_min", "ratio_max"])
    payload = {"machine": machine(), "size": args.size, "rounds": args.rounds, "models": info,
               "rows": rows}
    write_json(args.out / f"classifier_speed_{'gpu' if torch.cuda.is_available() else 'cpu'}.json",
               payload)
    return payload


if __name__ == "__main__":
    main()
