"""Do a run's cells look like the data the classifier learned from? (label-free)

Every BatchNorm layer keeps the running mean and variance of its input over the training data.
Crops from the same kind of smear give layer inputs with about those statistics; a stain,
camera, white balance or scale the model never saw moves them (it is the shift AdaBN undoes,
:mod:`napari_ddrnet.domain_adapt`). :func:`feature_shift` measures how far, in units of the
training standard deviation, averaged over channels and layers.

Tried on 2026-12-06 as a label-free "unlike the training data" warning and not wired into the
plugin: on LISC as a whole it read just under the threshold fixed on the selection sets
(``docs/cross-source.md``, ``python -m benchmarks.domain_shift``). Kept here as the record.
"""

from __future__ import annotations

import torch
from torch import nn

#: Crops per draw in the benchmark (the fewest a run would have needed for a verdict).
SHIFT_MIN_CROPS = 32


@torch.no_grad()
def feature_shift(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> float:
    """Mean standardised distance of the crops' BatchNorm input means from the running means.

    Parameters
    ----------
    model : torch.nn.Module
        An unfused model (its BatchNorm2d layers present) in eval mode; it is not modified.
    x : torch.Tensor
        ``(N, 3, S, S)`` crops normalised as for inference.
    batch_size : int
        Crops per forward pass.

    Returns
    -------
    float
        ``mean over layers of mean over channels |mu - running_mean| / sqrt(running_var + eps)``,
        where ``mu`` is the mean of the layer's input over every crop and pixel.

    Raises
    ------
    ValueError
        For a model without BatchNorm2d layers (fused or GroupNorm) or no crops.
    """
    layers = [m for m in model.modules()
              if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]
    if not layers:
        raise ValueError("the feature shift needs a model with BatchNorm2d running statistics")
    if len(x) == 0:
        raise ValueError("the feature shift needs at least one crop")
    sums = [torch.zeros_like(m.running_mean, dtype=torch.float64) for m in layers]

    def hook(i):
        def fn(_mod, inp, _out):
            sums[i] += inp[0].double().sum(dim=(0, 2, 3)) / (inp[0].shape[2] * inp[0].shape[3])
        return fn

    was_training = model.training
    model.eval()
    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(layers)]
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    dist = [((s / len(x)) - m.running_mean.double()).abs()
            / torch.sqrt(m.running_var.double() + m.eps) for s, m in zip(sums, layers)]
    return float(torch.stack([d.mean() for d in dist]).mean())

