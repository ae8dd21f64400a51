"""Classifier throughput: DDRNet vs torchvision ResNet-18/50 at the same input size.

Usage::

    python -m benchmarks.classifier_speed [--size 64] [--threads 2] [--out benchmarks/results]

Prints crops/s for batch sizes 1/32/256 on the CPU (``--threads`` threads) and, when CUDA is
present, on the GPU in fp32, fp16 and bf16; DDRNet/ResNet-18 ratios are computed within the same
run. Params and MACs (multiply-accumulates, counted by torch's FLOP counter) per crop.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from napari_ddrnet.model import DDRNet, DDRNetConfig, count_parameters, fuse_for_inference

from .common import machine, print_table, timeit, write_json


def macs(model: torch.nn.Module, size: int) -> int:
    model.eval()
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        model(torch.randn(1, 3, size, size))
    return fc.get_total_flops() // 2


def models(num_classes: int = 8) -> dict:
    return {
        "ddrnet": fuse_for_inference(DDRNet(DDRNetConfig(num_classes=num_classes, norm="batch"))),
        "ddrnet_gn": DDRNet(DDRNetConfig(num_classes=num_classes, norm="group")).eval(),
        "resnet18": torchvision.models.resnet18(num_classes=num_classes).eval(),
        "resnet50": torchvision.models.resnet50(num_classes=num_classes).eval(),
    }


def throughput(model, size: int, batch: int, device: str, dtype=None, min_crops: int = 512,
               repeats: int = 5) -> float:
    model = model.to(device).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last)
    iters = max(1, min_crops // batch)

    def run():
        with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=dtype,
                                                    enabled=dtype is not None):
            for _ in range(iters):
                model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return batch * iters / timeit(run, repeats=repeats, warmup=2)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
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
            res = {}
            for name, m in ms.items():
                if device == "cpu" and name not in args.cpu_models:
                    continue
                if device == "cpu":
                    crops = 64 if b == 1 else 512
                else:
                    crops = 64 if b == 1 else 4096
                res[name] = throughput(m, args.size, b, device, dtype, min_crops=crops)
                print(f"{device} {dname} batch {b} {name}: {res[name]:.1f} crops/s", flush=True)
            for name, v in res.items():
                rows.append({"device": device, "dtype": dname, "batch": b, "model": name,
                             "crops_per_s": round(v, 1),
                             "ratio_vs_resnet18": round(v / res["resnet18"], 2)})
    table_info = [{"model": n, **v, "mmacs": round(v["macs"] / 1e6, 1)} for n, v in info.items()]
    print(f"input {args.size}x{args.size}, CPU threads {args.threads}")
    print_table(table_info, ["model", "params", "mmacs"])
    print()
    print_table(rows, ["device", "dtype", "batch", "model", "crops_per_s", "ratio_vs_resnet18"])
    payload = {"machine": machine(), "size": args.size, "models": info, "rows": rows}
    write_json(args.out / f"classifier_speed_{'gpu' if torch.cuda.is_available() else 'cpu'}.json",
               payload)
    return payload


if __name__ == "__main__":
    main()
