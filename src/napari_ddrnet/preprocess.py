"""Crop -> tensor normalisation, the one definition shared by training and inference."""

from __future__ import annotations

import numpy as np
import torch

#: Per-channel mean and std applied to 0..1 RGB (stored in the weights' metadata too).
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def crops_to_tensor(crops: np.ndarray | torch.Tensor, device: torch.device | str = "cpu",
                    mean=MEAN, std=STD) -> torch.Tensor:
    """``(N, S, S, 3) uint8`` crops to a normalised ``(N, 3, S, S) float32`` tensor."""
    t = torch.as_tensor(crops).to(device)
    t = t.permute(0, 3, 1, 2).float().div_(255.0)
    return normalize(t, mean, std)


def normalize(t: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """Normalise a ``(N, 3, S, S)`` 0..1 tensor in place and return it."""
    m = torch.tensor(mean, device=t.device, dtype=t.dtype)[None, :, None, None]
    s = torch.tensor(std, device=t.device, dtype=t.dtype)[None, :, None, None]
    return t.sub_(m).div_(s)
