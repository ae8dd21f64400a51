"""Unsupervised adaptation to a new laboratory at inference time (no labels needed).

- :func:`adapt_batchnorm` — AdaBN (Li et al. 2016): re-estimate every BatchNorm layer's running
  mean and variance on the new lab's own crops. A stain or camera shift moves the feature
  statistics the frozen BatchNorm layers normalise with; re-estimating them on the target crops
  undoes most of it. Needs a few dozen crops of the target (``docs/cross-source.md`` measures
  how many).
- :func:`reinhard_normalize` — Reinhard et al. (2001) colour transfer: match the crops' mean
  and standard deviation in CIE-LAB to a reference (by default the PBC training crops the model
  learned from).

Both are pure functions: nothing here changes a model or array in place.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

#: CIE-LAB per-channel (mean, std) of the PBC ``train`` crops (11,952 64 px centre crops, all
#: pixels pooled); recompute with :func:`lab_mean_std` on ``packs/pbc_train.npz``.
PBC_LAB_MEAN_STD: tuple[tuple[float, float, float], tuple[float, float, float]] = (
    (79.52, 10.61, 7.33), (15.53, 7.73, 12.93))


def _is_fused(model: nn.Module) -> bool:
    """True when a BatchNorm appears to have been folded into its convolution (a ``Conv2d``
    followed by an ``Identity`` in a ``Sequential``, as :func:`model.fuse_for_inference` does)."""
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            children = list(module.children())
            for a, b in zip(children[:-1], children[1:]):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.Identity):
                    return True
    return False


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, x: torch.Tensor, momentum: float | None = None,
                    batch_size: int = 1024, include_1d: bool = True) -> nn.Module:
    """AdaBN: a deep copy of ``model`` whose BatchNorm statistics come from the crops ``x``.

    Parameters
    ----------
    model : torch.nn.Module
        An unfused model (BatchNorm layers present). It is not modified.
    x : torch.Tensor
        ``(N, 3, S, S)`` crops of the target lab, normalised exactly as for inference
        (:func:`napari_ddrnet.preprocess.crops_to_tensor`). No labels.
    momentum : float, optional
        ``None`` (default): forget the source statistics and use the target's alone
        (cumulative average over the chunks of ``x``). A value in (0, 1] blends instead:
        ``stat = (1 - momentum) * source + momentum * target`` (one pass over ``x`` as a single
        batch), a safer choice when only a handful of crops is available.
    batch_size : int
        Crops per forward pass when ``momentum`` is ``None``. The crops are shuffled (fixed
        seed) and each chunk's statistics averaged, so chunks should be large: the default
        covers a typical slide in one or two passes.
    include_1d : bool
        Also re-estimate the classifier head's ``BatchNorm1d`` (one feature vector per crop, so
        it needs more crops than the convolutional layers, which see every pixel).

    Returns
    -------
    torch.nn.Module
        The adapted copy, in eval mode. Models without BatchNorm (e.g. GroupNorm DDRNet) come
        back as an unchanged copy.

    Raises
    ------
    ValueError
        If ``model`` was already fused for inference (its BatchNorm layers are gone), or ``x``
        has no crops.
    """
    if _is_fused(model):
        raise ValueError("adapt_batchnorm needs the unfused model (e.g. bundle.model before "
                         "fuse_for_inference): fused BatchNorm layers cannot be re-estimated")
    if len(x) == 0:
        raise ValueError("adapt_batchnorm needs at least one crop")
    adapted = copy.deepcopy(model).eval()
    kinds = (nn.BatchNorm2d, nn.BatchNorm1d) if include_1d else (nn.BatchNorm2d,)
    bns = [m for m in adapted.modules() if isinstance(m, kinds)]
    if not bns:
        return adapted
    if len(x) < 2 and any(isinstance(m, nn.BatchNorm1d) for m in bns):
        bns = [m for m in bns if not isinstance(m, nn.BatchNorm1d)]  # 1 vector has no variance
    device = next(adapted.parameters()).device
    for bn in bns:
        if momentum is None:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the chunks
        else:
            bn.momentum = float(momentum)
        bn.train()  # only the BN layers: dropout stays off
    step = len(x) if momentum is not None else max(2, int(batch_size))
    if step < len(x):
        # Chunks are averaged, so each must be a fair sample of the whole set: shuffle with a
        # fixed seed. (Crops in class order — e.g. a folder per class — would otherwise give
        # chunk statistics that miss the between-class variance, and a result that depends on
        # the order of the labels.)
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    for i in range(0, len(x), step):
        chunk = x[i:i + step]
        if len(chunk) < 2 and i > 0:  # a lone trailing crop: BatchNorm1d cannot use it
            break
        adapted(chunk.to(device))
    for bn in bns:
        bn.momentum = 0.1
    return adapted.eval()


def lab_mean_std(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel CIE-LAB mean and standard deviation over all pixels of ``(N, S, S, 3)``
    uint8 crops (one set-level statistic, like a slide's)."""
    from skimage.color import rgb2lab

    lab = rgb2lab(np.asarray(crops).reshape(-1, 1, 3))[:, 0]  # pixels as a column
    return lab.mean(0), lab.std(0)


def reinhard_normalize(crops_uint8: np.ndarray, target_mean_std=PBC_LAB_MEAN_STD,
                       source_mean_std=None, per_image: bool = False) -> np.ndarray:
    """Reinhard colour transfer of ``(N, S, S, 3)`` or ``(S, S, 3)`` uint8 crops.

    Parameters
    ----------
    crops_uint8 : numpy.ndarray
        Crops of one slide or lab.
    target_mean_std : pair of length-3 sequences
        LAB (mean, std) to map to; default: the PBC training crops (:data:`PBC_LAB_MEAN_STD`).
    source_mean_std : pair of length-3 sequences, optional
        LAB (mean, std) of the source; default: measured on ``crops_uint8`` as a whole (a
        set-level statistic keeps the colour differences *between* cells, e.g. an eosinophil's
        red granules, which per-image statistics would partly erase).
    per_image : bool
        Use each crop's own statistics instead (the original per-image method).

    Returns
    -------
    numpy.ndarray
        Same shape, uint8.
    """
    from skimage.color import lab2rgb, rgb2lab

    arr = np.asarray(crops_uint8)
    single = arr.ndim == 3
    batch = arr[None] if single else arr
    t_mean, t_std = (np.asarray(v, np.float64) for v in target_mean_std)
    lab = rgb2lab(batch)
    if per_image:
        mean = lab.mean((1, 2), keepdims=True)
        std = lab.std((1, 2), keepdims=True)
    elif source_mean_std is not None:
        mean, std = (np.asarray(v, np.float64) for v in source_mean_std)
    else:
        mean, std = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0)
    lab = (lab - mean) / np.maximum(std, 1e-6) * t_std + t_mean
    lab[..., 0] = np.clip(lab[..., 0], 0, 100)
    rgb = lab2rgb(lab)
    out = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
    return out[0] if single else out
