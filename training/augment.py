"""Batched augmentation on tensors (runs on the GPU when training there).

The paper's augmentations — flips, rotation by up to ±10°, zoom, random contrast — plus, as an
option, stain/colour jitter (per-channel gain and brightness) for robustness across stains and
cameras, and 90° rotations (a cell has no preferred orientation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = True
    rot90: bool = True
    max_rotation_deg: float = 10.0
    zoom: tuple[float, float] = (0.9, 1.15)
    max_shift: float = 0.06
    contrast: tuple[float, float] = (0.8, 1.2)
    stain_jitter: float = 0.0  # per-channel gain spread, e.g. 0.08
    hed_jitter: float = 0.0  # haematoxylin/eosin/DAB optical-density scale and shift, e.g. 0.05
    brightness: float = 0.0  # additive, e.g. 0.06


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None
                  ) -> torch.Tensor:
    """Augment a ``(N, 3, S, S)`` float batch in 0..1; every sample gets its own draw."""
    n, dev = x.shape[0], x.device

    def rand(*shape):
        return torch.rand(*shape, device=dev, generator=gen)

    if cfg.rot90:
        k = (rand(n) * 4).long()
        for r in range(1, 4):
            sel = k == r
            if sel.any():
                x[sel] = torch.rot90(x[sel], r, (2, 3))
    angle = (rand(n) * 2 - 1) * math.radians(cfg.max_rotation_deg)
    scale = cfg.zoom[0] + rand(n) * (cfg.zoom[1] - cfg.zoom[0])
    flip_x = torch.where(rand(n) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(n, device=dev)
    flip_y = torch.where(rand(n) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(n, device=dev)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = cos * flip_x
    theta[:, 0, 1] = -sin * flip_y
    theta[:, 1, 0] = sin * flip_x
    theta[:, 1, 1] = cos * flip_y
    theta[:, :, 2] = (rand(n, 2) * 2 - 1) * cfg.max_shift * 2
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    mean = x.mean((1, 2, 3), keepdim=True)
    c = cfg.contrast[0] + rand(n, 1, 1, 1) * (cfg.contrast[1] - cfg.contrast[0])
    x = (x - mean) * c + mean
    if cfg.stain_jitter > 0:
        gain = 1 + (rand(n, 3, 1, 1) * 2 - 1) * cfg.stain_jitter
        x = x * gain
    if cfg.hed_jitter > 0:
        x = _hed_jitter(x, cfg.hed_jitter, rand)
    if cfg.brightness > 0:
        x = x + (rand(n, 1, 1, 1) * 2 - 1) * cfg.brightness
    return x.clamp_(0, 1)


# Colour deconvolution matrix (Ruifrok & Johnston 2001), as in skimage.color.rgb2hed.
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])


def _hed_jitter(x: torch.Tensor, sigma: float, rand) -> torch.Tensor:
    """Stain augmentation in optical-density space (Tellez et al. 2018): each stain's
    concentration is scaled by 1 +- sigma and shifted by +- sigma, per sample."""
    m = _RGB_FROM_HED.to(x.device, x.dtype)
    m = m / m.norm(dim=1, keepdim=True)
    inv = torch.linalg.inv(m)
    n = x.shape[0]
    od = -torch.log(x.clamp(min=1e-3)).permute(0, 2, 3, 1)  # N,H,W,3
    hed = od @ inv
    alpha = 1 + (rand(n, 1, 1, 3) * 2 - 1) * sigma
    beta = (rand(n, 1, 1, 3) * 2 - 1) * sigma
    od = (hed * alpha + beta) @ m
    return torch.exp(-od).permute(0, 3, 1, 2).clamp(0, 1)
