"""Train a classifier on crop packs.

Usage::

    python -m training.train --config training/configs/pbc8_ddrnet.json [--out runs/NAME]
        [--packs packs] [--epochs N] [--device auto] [--resume] [--limit N]
    torchrun --nproc_per_node=K -m training.train --config ...   # DistributedDataParallel

The whole pack sits in (GPU) memory as uint8 and is augmented there batch by batch, so even a
16-core GPU host is never input-bound. Writes ``last.pt`` (for ``--resume``), ``best.pt`` (best
validation macro-F1, or the last epoch when there is no validation set), ``log.jsonl`` and
``train.log`` into the run folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import distributed as dist
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from napari_ddrnet.classify import resolve_device
from napari_ddrnet.preprocess import normalize

from .augment import AugmentConfig, augment_batch, style_bank
from .models import build_model
from .packs import load_pack, read_cut, read_size


def pick_device(name: str = "auto") -> torch.device:
    """The plugin's device choice; under torchrun each process takes its own GPU."""
    device = resolve_device(name)
    if device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def make_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """AdamW with decoupled weight decay (ours), or the paper's plain Adam (``"optimizer":
    "adam"``, no weight decay unless the config sets one)."""
    lr = float(cfg.get("lr", 2e-3))
    name = cfg.get("optimizer", "adamw")
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr,
                                weight_decay=float(cfg.get("weight_decay", 0.0)))
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr,
                                 weight_decay=float(cfg.get("weight_decay", 0.05)))
    raise ValueError(f"unknown optimizer {name!r}: adamw or adam")


def init_classes(init: Path) -> list[str] | None:
    """Class order of fine-tuning weights: ``<stem>.json`` beside packaged weights, or the run
    folder's ``meta.json`` beside a ``best.pt``; None when neither is there."""
    for side in (init.with_suffix(".json"), init.parent / "meta.json"):
        if side.exists():
            classes = json.loads(side.read_text()).get("classes")
            if classes:
                return list(classes)
    return None


def load_init(model: nn.Module, init: Path, classes: list[str]) -> None:
    """Load fine-tuning weights into ``model``.

    Weights trained on other classes (a PBC 8-class model started on the Kaggle 4-class set)
    keep their head rows of the classes both share, matched by name, so the fine-tune starts
    from what the pretraining learnt about those classes. A class the weights do not know is
    an error rather than a silently random row.

    Parameters
    ----------
    model : nn.Module
        The freshly built model for ``classes``.
    init : Path
        ``.safetensors`` or a state-dict ``.pt``.
    classes : list of str
        The training packs' class order.
    """
    if init.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(init))
    else:
        state = torch.load(init, map_location="cpu", weights_only=True)
    own = model.state_dict()
    src = init_classes(init)
    for key, val in state.items():
        mine = own.get(key)
        if mine is None or mine.shape == val.shape:
            continue
        if src is None or val.shape[0] != len(src) or mine.shape[0] != len(classes) \
                or val.shape[1:] != mine.shape[1:]:
            raise ValueError(f"{init}: {key} has shape {tuple(val.shape)}, the model "
                             f"{tuple(mine.shape)}, and no class list maps one onto the other")
        unknown = [c for c in classes if c not in src]
        if unknown:
            raise ValueError(f"{init} was not trained on {unknown}")
        state[key] = val[[src.index(c) for c in classes]].clone()
    model.load_state_dict(state)


def load_split(packs: Path, entries: list, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Concatenate packs; an entry is ``"name"`` or ``["name", repeat]``.

    An integer ``repeat`` oversamples the pack; a fraction below 1 keeps that share of it, a
    fixed random subset drawn with ``seed`` (to keep a large, redundant pack such as Kaggle's
    35 augmented copies per field from swamping the others).
    """
    xs, ys, classes = [], [], None
    for e in entries:
        name, rep = (e, 1.0) if isinstance(e, str) else (e[0], float(e[1]))
        x, y, cls, _ = load_pack(packs / f"{name}.npz")
        if classes is None:
            classes = cls
        elif cls != classes:  # map labels into the first pack's class list
            y = np.asarray([classes.index(cls[i]) for i in y])
        if rep < 1:
            keep = np.sort(np.random.default_rng(seed).permutation(len(y))[:round(rep * len(y))])
            x, y, rep = x[keep], y[keep], 1
        xs += [x] * int(rep)
        ys += [y] * int(rep)
    return np.concatenate(xs), np.concatenate(ys), classes


def epoch_shard(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """This rank's sample indices for one epoch.

    Every rank draws the *same* permutation (the generator is seeded with the run seed and the
    epoch, never the rank) and takes every ``world``-th element from ``rank``: the shards are
    disjoint and together cover the epoch. (Per-rank seeds made shards overlap and skip
    samples.) Seeding by epoch also makes ``--resume`` draw the order the uninterrupted run
    would have drawn.
    """
    gen = torch.Generator(device=device).manual_seed(int(seed) * 100_003 + int(epoch))
    perm = torch.randperm(n, device=device, generator=gen)
    return perm[rank::world]


def class_weights(y: np.ndarray, k: int, power: float) -> torch.Tensor:
    """Loss weights ``(N / count) ** power`` normalised to mean 1 (rare classes count more)."""
    counts = np.bincount(y, minlength=k).astype(np.float64)
    w = (counts.sum() / np.maximum(counts, 1)) ** power
    return torch.tensor(w / w.mean(), dtype=torch.float32)


@torch.inference_mode()
def predict(model: nn.Module, x_u8: torch.Tensor, device: torch.device, batch: int = 1024,
            amp: bool = False) -> np.ndarray:
    """Softmax probabilities for ``(N, S, S, 3) uint8`` crops."""
    model.eval()
    out = []
    for i in range(0, len(x_u8), batch):
        xb = x_u8[i:i + batch].to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 255
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(normalize(xb))
        out.append(torch.softmax(logits.float(), 1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """Macro-F1 over the classes that occur in ``y`` or ``pred`` (scikit-learn)."""
    from sklearn.metrics import f1_score

    labels = sorted(set(np.asarray(y).tolist()) | set(np.asarray(pred).tolist()))
    return float(f1_score(y, pred, labels=labels, average="macro", zero_division=0))


def load_style_groups(packs: Path, groups: list) -> list[np.ndarray]:
    """The crops of each lab named in a config's ``lab_style_groups``: ``[pack, prefix]`` pairs,
    the pack's crops whose name starts with ``prefix`` (``""``: all of them; e.g.
    ``["txl_pseudo9", "raabin/"]`` for one source of a pseudo-label pack)."""
    out = []
    for name, prefix in groups:
        x, _, _, names = load_pack(packs / f"{name}.npz")
        keep = [i for i, n in enumerate(names) if n.startswith(prefix)]
        if not keep:
            raise ValueError(f"no crop of {name} starts with {prefix!r}")
        out.append(x[keep])
    return out


def train(cfg: dict, out: Path, packs: Path, device_name: str = "auto", resume: bool = False,
          limit: int | None = None, quiet: bool = False) -> dict:
    """Run one training job; returns a summary dict (also written to ``summary.json``)."""
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    device = pick_device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed + rank)
    out.mkdir(parents=True, exist_ok=True)

    x_tr, y_tr, classes = load_split(packs, cfg["train"], seed)
    if limit:
        sel = np.random.default_rng(seed).permutation(len(y_tr))[:limit]
        x_tr, y_tr = x_tr[sel], y_tr[sel]
    k = len(classes)
    # Each validation pack is scored on its own; selection uses the mean of their macro-F1,
    # so a small second domain (BCCD) weighs as much as a large one (PBC).
    vals = [(str(v), *load_split(packs, [v])[:2]) for v in cfg.get("val") or []]
    on_gpu = device.type == "cuda"
    xt = torch.from_numpy(x_tr).to(device if on_gpu else "cpu")
    yt = torch.from_numpy(y_tr).to(device if on_gpu else "cpu")

    model = build_model(cfg["arch"], k, cfg.get("ddrnet"))
    if cfg.get("init"):  # fine-tune: start from weights (.safetensors or a state-dict .pt)
        load_init(model, Path(cfg["init"]), classes)
    if cfg.get("mixstyle"):  # training-time hooks only: the weights' format does not change
        from .mixstyle import MixStyleConfig, attach_mixstyle

        ms = dict(cfg["mixstyle"])
        ms["layers"] = tuple(ms.get("layers", MixStyleConfig.layers))
        attach_mixstyle(model, MixStyleConfig(**ms), seed)
    model = model.to(device)
    model = model.to(memory_format=torch.channels_last)
    if distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if on_gpu else None)
    epochs = int(cfg.get("epochs", 30))
    bs = int(cfg.get("batch_size", 128))
    steps_per_epoch = max(1, math.ceil(len(y_tr) / (bs * world)))
    opt = make_optimizer(model, cfg)
    total = epochs * steps_per_epoch
    warm = min(steps_per_epoch, total // 10 + 1)
    constant = cfg.get("schedule", "cosine") == "constant"

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine decay to zero
        if constant:  # the paper's schedule: one learning rate throughout
            return 1.0
        return min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    aug = AugmentConfig(**cfg.get("augment", {}))
    styles = None
    if aug.lab_style_p > 0:  # each lab's per-crop LAB statistics, drawn lab first
        if not cfg.get("lab_style_groups"):
            raise ValueError("augment.lab_style_p needs lab_style_groups in the config "
                             "([pack, name prefix] pairs, one lab each)")
        styles = style_bank(load_style_groups(packs, cfg["lab_style_groups"]))
    weights = class_weights(y_tr, k, float(cfg.get("class_weight_power", 0.5))).to(device)
    amp = on_gpu and bool(cfg.get("amp", True))
    start_epoch, best_f1, history = 0, -1.0, []
    last_path = out / "last.pt"
    if resume and last_path.exists():
        state = torch.load(last_path, map_location=device, weights_only=True)
        (model.module if distributed else model).load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start_epoch, best_f1 = int(state["epoch"]) + 1, float(state["best_f1"])
    log = open(out / "train.log", "a") if rank == 0 else None
    t0 = time.time()
    for epoch in range(start_epoch, epochs):
        model.train()
        perm = epoch_shard(len(yt), seed, epoch, rank, world, xt.device)
        tot_loss, seen, correct = 0.0, 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}",
                   disable=True if (quiet or rank != 0) else None, leave=False)
        for step in bar:
            idx = perm[step * bs:(step + 1) * bs]
            if len(idx) == 0:
                continue
            xb = xt[idx].to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
            yb = yt[idx].to(device, non_blocking=True)
            xb = normalize(augment_batch(xb, aug, styles=styles)).contiguous(
                memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb, weight=weights,
                                   label_smoothing=float(cfg.get("label_smoothing", 0.05)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.item() * len(idx)
            seen += len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            bar.set_postfix(loss=f"{tot_loss / seen:.3f}")
        rec = {"epoch": epoch + 1, "train_loss": tot_loss / max(seen, 1),
               "train_acc": correct / max(seen, 1), "lr": sched.get_last_lr()[0],
               "elapsed_s": time.time() - t0}
        net = model.module if distributed else model
        improved = True
        if vals and rank == 0:
            f1s = []
            for name, xv, yv in vals:
                p = predict(net, torch.from_numpy(xv), device, amp=amp).argmax(1)
                f1s.append(macro_f1(yv, p))
                if len(vals) > 1:
                    rec[f"val_acc_{name}"] = float((p == yv).mean())
                    rec[f"val_macro_f1_{name}"] = f1s[-1]
                else:
                    rec["val_acc"] = float((p == yv).mean())
            rec["val_macro_f1"] = float(np.mean(f1s))
            # Epochs before ``select_after_epoch`` are logged but never selected: a fine-tune's
            # early, high-learning-rate checkpoints scored well on val and badly on test.
            # (Clamped to the run's length: a shortened run still selects its last epoch.)
            if epoch + 1 >= min(int(cfg.get("select_after_epoch", 1)), epochs):
                improved = rec["val_macro_f1"] > best_f1
                best_f1 = max(best_f1, rec["val_macro_f1"])
            else:
                improved = False
        if rank == 0:
            history.append(rec)
            line = json.dumps(rec)
            log.write(line + "\n")
            log.flush()
            if not quiet:
                print(line, flush=True)
            meta = {"arch": cfg["arch"], "classes": classes, "ddrnet": cfg.get("ddrnet", {}),
                    "crop_fov_um": read_cut(packs), "input_size": read_size(packs)}
            state = {"model": net.state_dict(), "opt": opt.state_dict(),
                     "sched": sched.state_dict(), "epoch": epoch, "best_f1": best_f1}
            torch.save(state, last_path.with_suffix(".tmp"))
            os.replace(last_path.with_suffix(".tmp"), last_path)
            if improved or not vals:
                torch.save(net.state_dict(), out / "best.tmp")
                os.replace(out / "best.tmp", out / "best.pt")
                (out / "meta.json").write_text(json.dumps(meta, indent=1))
    summary = {"config": cfg, "classes": classes, "epochs": epochs, "n_train": int(len(y_tr)),
               "train_time_s": time.time() - t0, "device": str(device), "world_size": world,
               "best_val_macro_f1": best_f1 if vals else None,
               "augment": asdict(aug), "history": history}
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        log.close()
    if distributed:
        dist.destroy_process_group()
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train DDRNet or a ResNet baseline on crop packs.")
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--packs", type=Path, default=Path("packs"))
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--limit", type=int, help="train on a random subset of N crops")
    ap.add_argument("--threads", type=int,
                    help="torch CPU threads (default: torch's choice; set it on a shared CPU)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON",
                    help="override config keys, e.g. ddrnet='{\"use_csab\": false}'")
    args = ap.parse_args(argv)
    cfg = json.loads(args.config.read_text())
    if args.epochs:
        cfg["epochs"] = args.epochs
    for kv in args.set:
        key, val = kv.split("=", 1)
        cfg[key] = json.loads(val)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or Path("runs") / args.config.stem
    train(cfg, out, args.packs, args.device, args.resume, args.limit)


if __name__ == "__main__":
    main()
