"""Adapt the classifier to a laboratory from its own reviewed cells ("Adapt to my lab").

A model trained on one laboratory's smears loses accuracy on another's (stain, camera,
optics); a few dozen cells that a person has confirmed or corrected in that lab are the
fastest cure (Chossegros et al. 2024). The method, in order:

1. **AdaBN** (Li et al. 2016): the BatchNorm running statistics are re-estimated on the lab's
   own crops (all 8 rotations/flips of the training cells; opt-in, also the run's other cells
   without their labels: ``unreviewed=True``, ``unlabelled_crops``), which undoes most of a
   stain or camera shift before any weight moves.
2. **Fine-tuning regularised toward the shipped model**: a few AdamW steps on class-balanced,
   augmented batches (rotations/flips, small stain and brightness jitter), with an **L2-SP**
   penalty (Li et al. 2018) pulling every weight toward its base value, so that classes nobody
   reviewed (erythroblasts, platelets, ...) keep their base behaviour instead of collapsing,
   and label smoothing over all the model's classes. BatchNorm layers stay frozen at the
   statistics of step 1 (a few dozen cells cannot give stable batch statistics).
3. A part of the reviewed cells (whole groups when a ``cell_group`` column is given) is held
   out and classified before and after, so the user sees what adaptation bought.

The result is a weights file + JSON card (:func:`napari_ddrnet.weights.export_weights`) that
loads like the shipped model, written to :func:`napari_ddrnet.user_models.user_models_dir` by
default. ``docs/adaptation.md`` measures the method on two unseen laboratories (LISC, BCCD).
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from .classes import UNIDENTIFIED
from .preprocess import normalize
from .schema import CROP_SINGLE_CELL
from .weights import ModelBundle, WeightsError, load_bundle, sha256_file

#: CELLS.csv columns adaptation needs (single-cell mode needs only ``image`` and the class).
FIELD_COLUMNS = ("image", "centroid_row", "centroid_col", "min_row", "min_col", "max_row",
                 "max_col", "pixel_size_um", "reviewed_class")
SINGLE_CELL_COLUMNS = ("image", "reviewed_class")
#: Fewer reviewed cells or classes than this cannot adapt anything meaningfully.
MIN_CELLS = 10
MIN_CLASSES = 2
#: At most this many unlabelled crops of the lab are used (AdaBN statistics settle well
#: before; it bounds the time on a large run).
MAX_UNLABELLED = 1024
#: Card keys copied from the base model: the adapted model must crop and scale alike.
TRANSFORM_KEYS = ("architecture", "config", "classes", "input_size", "crop_fov_um", "mean",
                  "std")


class AdaptError(ValueError):
    """The reviewed cells cannot be used for adaptation (too few, unknown class, missing
    image or columns). Nothing is written when it is raised."""


@dataclass(frozen=True)
class AdaptConfig:
    """Fine-tuning hyper-parameters (defaults measured in ``benchmarks/adaptation.py``).

    Attributes
    ----------
    steps : int or None
        Optimiser steps; ``None``: :meth:`default_steps` of the number of training cells.
    batch_size : int
        Crops per step (class-balanced draw with replacement).
    lr : float
        Peak AdamW learning rate (cosine decay to zero).
    l2sp : float
        Weight of the L2-SP penalty ``sum((w - w_base) ** 2) / 2``.
    label_smoothing : float
        Label smoothing of the cross-entropy, over all the model's classes.
    stain_jitter, brightness : float
        Per-channel gain ``1 ± stain_jitter`` and additive brightness ``± brightness`` on 0..1
        RGB (a lab's own slides still vary in stain).
    adabn : bool
        Re-estimate the BatchNorm statistics on the lab's crops first.
    lab_adabn : bool
        Include the lab's unlabelled crops (``fine_tune(unlabelled=...)``: unreviewed and
        held-out cells of the run) in that estimate, not only the training cells.
    """

    steps: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    l2sp: float = 0.01
    label_smoothing: float = 0.1
    stain_jitter: float = 0.05
    brightness: float = 0.03
    adabn: bool = True
    lab_adabn: bool = True

    def default_steps(self, n_train: int) -> int:
        """At least 300 steps (about 10 passes over the cells beyond ~960 cells), at most 400.

        Chosen on the tune part of LISC (10 cells per class: 300 steps 92.7 ± 4.6 % against
        87.1 ± 13.8 % for the earlier 60-200; ``benchmarks/adaptation_steps.py``) and confirmed
        on the report part (93.3 ± 2.8 % against 91.2 ± 2.4 %). Few cells need many steps of
        the augmented, class-balanced draws; L2-SP keeps them near the base model.
        """
        return int(min(400, max(300, math.ceil(10 * n_train / self.batch_size))))


@dataclass
class AdaptReport:
    """What :func:`adapt_from_cells` did.

    Attributes
    ----------
    path : Path
        The adapted weights (``.safetensors``; the card is beside it as ``.json``).
    n_train, n_holdout : int
        Reviewed cells used for fine-tuning and held out for the before/after check.
    before_accuracy, after_accuracy : float or None
        Accuracy on the held-out cells of the base and the adapted model (``None`` when
        nothing was held out).
    per_class : dict
        ``class -> {"train": n, "holdout": n, "before": acc, "after": acc}`` (accuracies
        ``None`` where the class has no held-out cell).
    seconds : float
        Wall time of the whole adaptation.
    n_unlabelled : int
        Crops of the lab used without labels (AdaBN): unreviewed and held-out cells.
    timings : dict
        Wall seconds per phase (``reviewed_crops``, ``unreviewed_crops``, ``fine_tune``,
        ``holdout_check``, ``save``): where the time of :attr:`seconds` went.
    """

    path: Path
    n_train: int
    n_holdout: int
    before_accuracy: float | None
    after_accuracy: float | None
    per_class: dict = field(default_factory=dict)
    seconds: float = 0.0
    n_unlabelled: int = 0
    timings: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Reviewed rows and their crops


def single_cell_rows(cells: pd.DataFrame, single_cell: bool | None = None) -> np.ndarray:
    """Per row of ``cells``, whether its crop is the image's centred square (single-cell).

    CELLS.csv records how each row's crop was cut (``crop_mode``: ``field`` or
    ``single-cell``), and a row's own record always wins. Rows without one (files written
    before that column existed) are single-cell images if ``single_cell`` says so, else fields.

    Parameters
    ----------
    cells : pandas.DataFrame
        CELLS.csv rows.
    single_cell : bool, optional
        What rows without ``crop_mode`` are (``adapt --single-cell`` for older CSVs).

    Returns
    -------
    numpy.ndarray
        Boolean, one per row.

    Raises
    ------
    AdaptError
        For an unknown ``crop_mode``.
    """
    from .schema import CROP_FIELD, CROP_SINGLE_CELL

    mode = (cells["crop_mode"].fillna("").astype(str).str.strip().str.lower()
            if "crop_mode" in cells else pd.Series("", index=cells.index, dtype=object))
    unknown = sorted(set(mode) - {"", "nan", CROP_FIELD, CROP_SINGLE_CELL})
    if unknown:
        raise AdaptError(f"unknown crop_mode value(s) {', '.join(unknown)}: expected "
                         f"{CROP_FIELD} or {CROP_SINGLE_CELL}")
    single = mode == CROP_SINGLE_CELL
    single |= mode.isin(["", "nan"]) & bool(single_cell)
    return single.to_numpy(bool)


def reviewed_cells(cells: pd.DataFrame, classes, single_cell: bool | None = None
                   ) -> pd.DataFrame:
    """The rows of ``cells`` a person reviewed (``reviewed_class`` set), checked.

    Rows whose ``reviewed_class`` is empty or ``unidentified`` (a reviewer's "not a cell I can
    name") are dropped. Class names are matched case-insensitively. Each row's ``crop_mode``
    says how its crop is re-cut (:func:`single_cell_rows`; ``single_cell`` for rows without
    one); the result has it on every row.

    Raises
    ------
    AdaptError
        When needed columns are missing or a reviewed class is not one of ``classes``.
    """
    from .schema import CROP_FIELD, CROP_SINGLE_CELL

    single = single_cell_rows(cells, single_cell)
    cells = cells.assign(crop_mode=np.where(single, CROP_SINGLE_CELL, CROP_FIELD))
    need = SINGLE_CELL_COLUMNS if single.all() else FIELD_COLUMNS
    missing = [c for c in need if c not in cells.columns]
    if missing:
        raise AdaptError(f"the cells table lacks column(s) {', '.join(missing)} (a CELLS.csv "
                         "from `napari-ddrnet count` or the widget, plus reviewed_class)")
    rc = cells["reviewed_class"].fillna("").astype(str).str.strip().str.lower()
    keep = (rc != "") & (rc != "nan") & (rc != UNIDENTIFIED)
    out = cells.loc[keep].copy()
    out["reviewed_class"] = rc[keep]
    known = {c.lower(): c for c in classes}
    unknown = sorted(set(out["reviewed_class"]) - set(known))
    if unknown:
        raise AdaptError(f"unknown class name(s) in reviewed_class: {', '.join(unknown)}; the "
                         f"model's classes are {', '.join(classes)}")
    out["reviewed_class"] = out["reviewed_class"].map(known)
    field = (out["crop_mode"] == CROP_FIELD).to_numpy()
    if field.any():
        geometry = list(FIELD_COLUMNS[1:-1])
        for c in geometry:  # text here (a hand-edited table) would fail deep in the cropping
            out[c] = pd.to_numeric(out[c], errors="coerce")
        px = out.loc[field, "pixel_size_um"]
        if (~np.isfinite(px)).any() or (px <= 0).any():
            raise AdaptError("pixel_size_um must be a positive number on every reviewed row")
        bad = [c for c in geometry if not np.isfinite(out.loc[field, c].to_numpy(float)).all()]
        if bad:
            raise AdaptError(f"{', '.join(bad)} must be numbers on every reviewed row of a "
                             "field (the table as `count` wrote it)")
    return out.reset_index(drop=True)


def _load_rgb(name: str, images: dict | None) -> np.ndarray:
    from .image_input import to_rgb_uint8
    from .image_io import read_image

    if images is not None and name in images:
        return to_rgb_uint8(np.asarray(images[name]))
    levels, _ = read_image(name)
    return to_rgb_uint8(np.asarray(levels[0]))


def cut_crops(cells: pd.DataFrame, input_size: int, crop_fov_um: float,
              images: dict[str, np.ndarray] | None = None,
              single_cell: bool | np.ndarray = False) -> np.ndarray:
    """Re-cut the crops of ``cells`` exactly as the pipeline cuts them for the model.

    Parameters
    ----------
    cells : pandas.DataFrame
        Rows with ``image`` and (fields) the geometry and ``pixel_size_um``.
    input_size, crop_fov_um : int, float
        The model's transforms (from its card).
    images : dict, optional
        ``image`` name -> in-memory array; other names are read from disk.
    single_cell : bool or numpy.ndarray
        Each image is one centred cell: its centred square is the crop
        (:func:`napari_ddrnet.crop.crop_centre`), as in ``count --single-cell``; or one such
        flag per row (:func:`single_cell_rows`).

    Returns
    -------
    numpy.ndarray
        ``(N, input_size, input_size, 3) uint8`` in row order.

    Raises
    ------
    AdaptError
        When an image is missing or unreadable.
    """
    from .crop import crop_cells, crop_centre
    from .image_input import ImageInputError

    out = np.empty((len(cells), input_size, input_size, 3), np.uint8)
    single = np.broadcast_to(np.asarray(single_cell, bool), (len(cells),))
    cells = cells.assign(_single=single)
    for name, rows in cells.groupby("image", sort=False):
        try:
            rgb = _load_rgb(str(name), images)
        except (ImageInputError, OSError) as exc:
            raise AdaptError(f"cannot read image {name}: {exc}") from exc
        whole, field_rows = rows.loc[rows["_single"]], rows.loc[~rows["_single"]]
        if len(whole):
            out[whole.index.to_numpy()] = crop_centre(rgb, input_size)
        if not len(field_rows):  # single-cell tables need no geometry columns
            continue
        for px, sub in field_rows.groupby("pixel_size_um", sort=False):
            out[sub.index.to_numpy()] = crop_cells(rgb, sub, float(px), input_size,
                                                   fov_um=crop_fov_um)
    return out


def split_holdout(labels: np.ndarray, groups: np.ndarray, holdout: float, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, grouped train/held-out split: whole groups go to one side.

    Each class keeps at least one group for training; a class with a single group is not held
    out. scikit-learn's ``StratifiedGroupKFold`` would do, but it is not a runtime dependency.

    Returns
    -------
    train_idx, holdout_idx : numpy.ndarray
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"y": labels, "g": groups})
    group_class = frame.groupby("g", sort=True)["y"].agg(lambda s: s.mode().iloc[0])
    held = set()
    if holdout > 0:
        for _, gs in group_class.groupby(group_class):
            names = gs.index.to_numpy()
            n_hold = min(len(names) - 1, int(round(holdout * len(names))))
            if n_hold > 0:
                held.update(rng.permutation(names)[:n_hold].tolist())
    mask = frame["g"].isin(held).to_numpy()
    return np.flatnonzero(~mask), np.flatnonzero(mask)


# --------------------------------------------------------------------------------------------
# The method


def _dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    rots = [torch.rot90(x, k, (2, 3)) for k in range(4)]
    return rots + [torch.flip(r, (3,)) for r in rots]


def _to_unit(crops: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(crops).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, x: torch.Tensor, chunk: int = 256) -> None:
    """AdaBN in place: BatchNorm running statistics from the normalised crops ``x`` alone
    (cumulative average over chunks; dropout stays off)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or len(x) < 2:
        return
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    dev = next(model.parameters()).device
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk]
        if len(part) >= 2:
            model(part.to(dev))
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def _augment(x: torch.Tensor, cfg: AdaptConfig, gen: torch.Generator) -> torch.Tensor:
    """Random rotation/flip of each crop, then small stain and brightness jitter (0..1 RGB)."""
    n = len(x)
    k = torch.randint(0, 8, (n,), generator=gen)
    out = torch.empty_like(x)
    for r in range(8):
        sel = k == r
        if sel.any():
            v = torch.rot90(x[sel], r % 4, (2, 3))
            out[sel] = torch.flip(v, (3,)) if r >= 4 else v
    gain = 1 + (torch.rand(n, 3, 1, 1, generator=gen) * 2 - 1) * cfg.stain_jitter
    shift = (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * cfg.brightness
    return (out * gain + shift).clamp_(0, 1)


@torch.no_grad()
def predict_proba(model: nn.Module, crops: np.ndarray, mean, std, batch: int = 256,
                  tta: bool = True) -> np.ndarray:
    """Softmax probabilities of an (unfused) model, averaged over the 8 rotations/flips as the
    plugin's :class:`~napari_ddrnet.classify.Classifier` does by default."""
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(crops), batch):
        x = normalize(_to_unit(crops[i:i + batch]).to(dev), mean, std)
        views = _dihedral(x) if tta else [x]
        out.append((sum(torch.softmax(model(v), 1) for v in views) / len(views)).cpu())
    if not out:
        return np.zeros((0, model.fc.out_features if hasattr(model, "fc") else 0), np.float32)
    return torch.cat(out).numpy()


def fine_tune(bundle: ModelBundle, crops: np.ndarray, labels: np.ndarray,
              config: AdaptConfig | None = None, seed: int = 0,
              progress: Callable[[int, int], None] | None = None,
              unlabelled: np.ndarray | None = None, device: str = "cpu") -> nn.Module:
    """AdaBN, then L2-SP-regularised fine-tuning of a copy of ``bundle.model``.

    Parameters
    ----------
    bundle : ModelBundle
        The base model (unfused) and its transforms; not modified.
    crops : numpy.ndarray
        ``(N, S, S, 3) uint8`` training crops of the lab.
    labels : numpy.ndarray
        ``(N,)`` class indices into ``bundle.classes``.
    config : AdaptConfig, optional
    seed : int
    progress : callable, optional
        ``progress(done, total)`` after each optimiser step.
    unlabelled : numpy.ndarray, optional
        ``(M, S, S, 3) uint8`` other crops of the same lab, without labels: with
        ``config.lab_adabn`` they join the AdaBN estimate (at most :data:`MAX_UNLABELLED`,
        a seeded random subset beyond).
    device : str
        Where to train (``auto``, ``cpu``, ``cuda``, ``mps``). The random draws are made on
        the CPU, so a seed picks the same cells and augmentations on every device.

    Returns
    -------
    torch.nn.Module
        The adapted model, in eval mode, on the CPU.
    """
    from .devices import resolve_device

    dev = resolve_device(device)
    cfg = config or AdaptConfig()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(bundle.model).float().to(dev)
    x_all = _to_unit(crops)
    y_all = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if cfg.adabn:
        # The training cells in all 8 views; the lab's other cells (no labels) once each: a
        # run of hundreds of cells gives steadier statistics than a few reviewed ones.
        views = torch.cat(_dihedral(normalize(x_all.clone(), bundle.mean, bundle.std)))
        if cfg.lab_adabn and unlabelled is not None and len(unlabelled):
            if len(unlabelled) > MAX_UNLABELLED:  # a random subset estimates them as well
                pick = np.random.default_rng(seed).permutation(len(unlabelled))
                unlabelled = unlabelled[np.sort(pick[:MAX_UNLABELLED])]
            x_unl = normalize(_to_unit(unlabelled), bundle.mean, bundle.std)
            views = torch.cat([views, x_unl])
        reestimate_batchnorm(model, views[torch.randperm(len(views), generator=gen)])
    base = [p.detach().clone() for p in model.parameters()]
    params = list(model.parameters())
    steps = cfg.steps if cfg.steps is not None else cfg.default_steps(len(crops))
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1))))
    # Class-balanced draws: a lab's reviewed cells are mostly neutrophils.
    counts = torch.bincount(y_all, minlength=len(bundle.classes)).float()
    weights = 1.0 / counts[y_all]
    model.train()
    for m in model.modules():  # frozen (AdaBN) statistics; dropout stays on
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    for step in range(steps):
        idx = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=gen)
        x = normalize(_augment(x_all[idx], cfg, gen).to(dev), bundle.mean, bundle.std)
        loss = F.cross_entropy(model(x), y_all[idx].to(dev),
                               label_smoothing=cfg.label_smoothing)
        if cfg.l2sp > 0:
            loss = loss + 0.5 * cfg.l2sp * sum(((p - b) ** 2).sum() for p, b in zip(params, base))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step + 1, steps)
    return model.cpu().eval()


# --------------------------------------------------------------------------------------------
# The user-facing entry point


def default_output() -> Path:
    """A new file name in the user's model folder, dated to the second."""
    from .user_models import user_models_dir

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return user_models_dir() / f"adapted-{stamp}.safetensors"


def _accuracy(pred: np.ndarray, y: np.ndarray) -> float | None:
    return float((pred == y).mean()) if len(y) else None


def adapt_from_cells(
    cells: pd.DataFrame,
    out: Path | None = None,
    *,
    images: dict[str, np.ndarray] | None = None,
    base_weights=None,
    single_cell: bool | None = None,
    epochs: int | None = None,
    holdout: float = 0.2,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    config: AdaptConfig | None = None,
    source_files: list[str] | None = None,
    unreviewed: bool = False,
    unlabelled_crops: np.ndarray | None = None,
    device: str = "auto",
) -> AdaptReport:
    """Fine-tune the classifier on a lab's reviewed cells and save it as a user model.

    Parameters
    ----------
    cells : pandas.DataFrame
        CELLS.csv rows (``image``, ``centroid_row/col``, ``min/max_row/col``,
        ``pixel_size_um``, ``reviewed_class``, ...); rows with an empty ``reviewed_class`` are
        ignored. An optional ``cell_group`` column keeps crops of one cell (or one slide) on
        the same side of the held-out split; else each row is its own group.
    out : Path, optional
        Output ``.safetensors``; default: a new file in
        :func:`napari_ddrnet.user_models.user_models_dir`.
    images : dict, optional
        ``image`` name -> in-memory array (e.g. napari layers); other images are read from
        their path.
    base_weights : str or Path, optional
        The model to adapt; default: the shipped one.
    single_cell : bool, optional
        Rows without a ``crop_mode`` (older CSVs) are single-cell images (crop = the image's
        centred square); rows with one are re-cut as it says (:func:`single_cell_rows`).
    epochs : int, optional
        Passes over the training cells (``ceil(epochs * n_train / batch_size)`` steps);
        default: :meth:`AdaptConfig.default_steps`.
    holdout : float
        Fraction of the reviewed cells (by group, per class) kept out of training to measure
        accuracy before and after; 0 trains on all.
    seed : int
    progress : callable, optional
        ``progress(done, total)`` after each fine-tuning step.
    config : AdaptConfig, optional
        Hyper-parameters (``epochs`` overrides its ``steps``).
    source_files : list of str, optional
        Where the cells came from (e.g. the reviewed CSVs), recorded on the card.
    unreviewed : bool
        Opt-in: use the rows of ``cells`` nobody reviewed (and the held-out ones), without
        their labels, as the lab's unlabelled run: the BatchNorm statistics are re-estimated
        on them too. Unreadable images among them are skipped. Off by default: on LISC it
        did not measurably help (``docs/adaptation.md``).
    unlabelled_crops : numpy.ndarray, optional
        ``(M, S, S, 3) uint8`` further crops of the same lab, cut as for the model.
    device : str
        Where to fine-tune: ``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``mps``.

    Returns
    -------
    AdaptReport

    Raises
    ------
    AdaptError
        Missing columns, unknown class names, unreadable images, or fewer than
        :data:`MIN_CELLS` reviewed training cells / :data:`MIN_CLASSES` classes. Nothing is
        written then.
    napari_ddrnet.weights.WeightsError
        When the base weights cannot be loaded.
    """
    t0 = time.perf_counter()
    from .devices import resolve_device

    try:
        resolve_device(device)  # an absent GPU fails here, before any image is read
    except ValueError as exc:
        raise AdaptError(str(exc)) from None
    if not 0.0 <= holdout < 1.0:
        raise AdaptError(f"holdout must be in [0, 1), got {holdout!r}")
    if epochs is not None and epochs < 1:
        raise AdaptError(f"epochs must be at least 1, got {epochs!r}")
    bundle = load_bundle(base_weights)
    rows = reviewed_cells(cells, bundle.classes, single_cell)
    cfg = config or AdaptConfig()
    try:
        _check_enough(rows["reviewed_class"], "reviewed")
    except AdaptError as exc:
        raise AdaptError(f"{exc}{_review_hint(cells)}") from None
    cls_index = {c: i for i, c in enumerate(bundle.classes)}
    y = rows["reviewed_class"].map(cls_index).to_numpy()
    groups = (rows["cell_group"].astype(str).to_numpy() if "cell_group" in rows
              else np.arange(len(rows)))
    tr, ho = split_holdout(y, groups, holdout, seed)
    _check_enough(rows["reviewed_class"].iloc[tr], "training")
    single = (rows["crop_mode"] == CROP_SINGLE_CELL).to_numpy()
    crops = cut_crops(rows, bundle.input_size, bundle.crop_fov_um, images, single)
    timings = {"reviewed_crops": time.perf_counter() - t0}
    if epochs is not None:
        cfg = AdaptConfig(**{**cfg.__dict__,
                             "steps": math.ceil(epochs * len(tr) / cfg.batch_size)})

    unl = np.zeros((0, *crops.shape[1:]), np.uint8)
    if unreviewed or unlabelled_crops is not None:  # opt-in whole-run AdaBN
        unl = [crops[ho]]
        if unreviewed:
            unl.append(_unreviewed_crops(cells, bundle, images, single_cell))
        if unlabelled_crops is not None:
            unl.append(np.asarray(unlabelled_crops, np.uint8))
        unl = np.concatenate(unl)
    timings["unreviewed_crops"] = time.perf_counter() - t0 - sum(timings.values())

    model = fine_tune(bundle, crops[tr], y[tr], cfg, seed, progress,
                      unlabelled=unl if len(unl) else None, device=device)
    timings["fine_tune"] = time.perf_counter() - t0 - sum(timings.values())

    before = after = np.zeros(0, int)
    if len(ho):
        before = predict_proba(bundle.model, crops[ho], bundle.mean, bundle.std).argmax(1)
        after = predict_proba(model, crops[ho], bundle.mean, bundle.std).argmax(1)
    timings["holdout_check"] = time.perf_counter() - t0 - sum(timings.values())
    per_class = {}
    for c in sorted(set(rows["reviewed_class"])):
        k = cls_index[c]
        sel = y[ho] == k
        per_class[c] = {"train": int((y[tr] == k).sum()), "holdout": int(sel.sum()),
                        "before": _accuracy(before[sel], y[ho][sel]),
                        "after": _accuracy(after[sel], y[ho][sel])}
    report = AdaptReport(Path(out) if out is not None else default_output(), len(tr), len(ho),
                         _accuracy(before, y[ho]), _accuracy(after, y[ho]), per_class,
                         n_unlabelled=min(len(unl), MAX_UNLABELLED), timings=timings)
    from .weights import export_weights, weights_path

    base_path = weights_path(base_weights) if base_weights is not None else None
    card = _card(bundle, base_path, rows, report, cfg, seed, bool(single.any()), source_files)
    card["adaptation"]["device"] = str(resolve_device(device))  # GPU sums differ in the last bits
    export_weights(model.state_dict(), card, report.path)
    report.seconds = time.perf_counter() - t0
    timings["save"] = report.seconds - sum(timings.values())
    return report


def run_adapt_job(messages, cells: pd.DataFrame, kwargs: dict) -> None:
    """Entry point of a separate process running :func:`adapt_from_cells` for the widget.

    A process of its own, started with ``spawn``, so that PyTorch's optimiser (which imports
    torch._dynamo and triton, with triton's own LLVM) never loads into napari's process after
    its OpenGL canvas has loaded Mesa's LLVM: the two clash and napari dies with a segmentation
    fault (seen under Xvfb/Mesa). It also keeps the fine-tuning off napari's GIL.

    Parameters
    ----------
    messages : multiprocessing.Queue
        Receives ``("progress", done, total)`` tuples, then ``("done", AdaptReport)`` or
        ``("error", exception, traceback_text)`` (``"Type: message"`` in place of the exception
        when it cannot be pickled; the text is the process's own traceback, which would
        otherwise die with it, empty for an :class:`AdaptError` or a ``WeightsError``).
    cells : pandas.DataFrame
        As for :func:`adapt_from_cells`.
    kwargs : dict
        Further keyword arguments of :func:`adapt_from_cells` (not ``progress``).
    """
    import pickle
    import traceback

    try:
        report = adapt_from_cells(
            cells, progress=lambda d, t: messages.put(("progress", d, t)), **kwargs)
        messages.put(("done", report))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the widget
        # A user's error (too few cells, bad weights) needs no traceback; anything else does.
        tb = "" if isinstance(exc, (AdaptError, WeightsError)) else traceback.format_exc()
        try:
            pickle.dumps(exc)
            messages.put(("error", exc, tb))
        except Exception:
            messages.put(("error", f"{type(exc).__name__}: {exc}", tb))


def _unreviewed_crops(cells: pd.DataFrame, bundle: ModelBundle,
                      images: dict[str, np.ndarray] | None, single_cell: bool | None
                      ) -> np.ndarray:
    """Crops of the rows nobody reviewed (empty ``reviewed_class`` or ``unidentified``) whose
    image can be read and, for fields, whose geometry is complete; others are skipped (they
    are optional, unlike the reviewed cells)."""
    empty = np.zeros((0, bundle.input_size, bundle.input_size, 3), np.uint8)
    if "image" not in cells:
        return empty
    rc = (cells["reviewed_class"].fillna("").astype(str).str.strip().str.lower()
          if "reviewed_class" in cells else pd.Series("", index=cells.index))
    rows = cells.assign(_single=single_cell_rows(cells, single_cell))
    rows = rows.loc[rc.isin(["", "nan", UNIDENTIFIED])]
    if not rows["_single"].all():
        if any(c not in rows for c in FIELD_COLUMNS[:-1]):
            return empty
        geom = rows[list(FIELD_COLUMNS[1:-1])].apply(pd.to_numeric, errors="coerce")
        ok = np.isfinite(geom.to_numpy(float)).all(1) & (geom["pixel_size_um"] > 0).to_numpy()
        rows = rows.loc[ok | rows["_single"].to_numpy()]
    rows = rows.reset_index(drop=True)
    try:  # one call: four times cheaper per single-cell image than one call per image
        return cut_crops(rows, bundle.input_size, bundle.crop_fov_um, images,
                         rows["_single"].to_numpy())
    except AdaptError:
        pass
    parts = []
    for _, sub in rows.groupby("image", sort=False):  # some image is unreadable: skip it
        sub = sub.reset_index(drop=True)
        try:
            parts.append(cut_crops(sub, bundle.input_size, bundle.crop_fov_um, images,
                                   sub["_single"].to_numpy()))
        except AdaptError:
            continue
    return np.concatenate(parts) if parts else empty


def _review_hint(cells: pd.DataFrame) -> str:
    """A hint when rows are marked reviewed but carry no ``reviewed_class`` (e.g. a reviewer
    who corrected the ``class`` column in a spreadsheet), else ""."""
    if "reviewed" not in cells:
        return ""
    marked = cells["reviewed"].astype(str).str.strip().str.lower().isin(("true", "1"))
    rc = (cells["reviewed_class"].fillna("").astype(str).str.strip()
          if "reviewed_class" in cells else pd.Series("", index=cells.index))
    n = int((marked & rc.isin(["", "nan"])).sum())
    if not n:
        return ""
    return (f"; {n} row(s) are marked reviewed but have an empty reviewed_class: put the class "
            "you decided in reviewed_class (the class column is only read as the model's call)")


def _check_enough(classes: pd.Series, what: str) -> None:
    n, k = len(classes), classes.nunique()
    if n < MIN_CELLS or k < MIN_CLASSES:
        raise AdaptError(f"too few {what} cells to adapt: {n} cell(s) in {k} class(es); at "
                         f"least {MIN_CELLS} cells in {MIN_CLASSES} classes are needed (review "
                         "more cells, or lower the held-out fraction)")


def _card(bundle: ModelBundle, base_path: Path | None, rows: pd.DataFrame,
          report: AdaptReport, cfg: AdaptConfig, seed: int, single_cell: bool,
          source_files: list[str] | None) -> dict:
    from .weights import DEFAULT_WEIGHTS

    base_file = base_path or DEFAULT_WEIGHTS
    card = {k: bundle.meta[k] for k in TRANSFORM_KEYS}
    card["name"] = report.path.stem
    card["base_model"] = {"name": bundle.meta.get("name", base_file.stem),
                          "file": base_file.name, "sha256": sha256_file(base_file)}
    card["adaptation"] = {
        "method": "AdaBN + L2-SP fine-tuning (napari_ddrnet.adapt)",
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cells_per_class": {c: v["train"] for c, v in report.per_class.items()},
        "holdout_per_class": {c: v["holdout"] for c, v in report.per_class.items()},
        "source_files": [str(f) for f in source_files or []],
        "images": sorted(set(rows["image"].astype(str))),
        "single_cell": bool(single_cell),  # some rows were single-cell images
        "crop_modes": {str(k): int(v) for k, v in rows["crop_mode"].value_counts().items()},
        "unlabelled_crops": int(report.n_unlabelled),
        "seed": int(seed),
        "config": {**cfg.__dict__},
        "holdout": {"n": report.n_holdout, "before_accuracy": report.before_accuracy,
                    "after_accuracy": report.after_accuracy,
                    "per_class": {c: {"before": v["before"], "after": v["after"]}
                                  for c, v in report.per_class.items()}},
    }
    return card


__all__ = ["AdaptConfig", "AdaptError", "AdaptReport", "adapt_from_cells", "cut_crops",
           "fine_tune", "predict_proba", "reestimate_batchnorm", "reviewed_cells",
           "split_holdout"]
