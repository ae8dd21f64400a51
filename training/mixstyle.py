"""MixStyle (Zhou et al., ICLR 2021): mix per-sample feature statistics during training.

At the chosen layers, each sample's channel-wise mean and standard deviation (over the spatial
positions) are replaced, with probability ``p`` per batch, by a convex mix of its own and those
of another sample of the batch (weight ``lam ~ Beta(alpha, alpha)`` per sample). A batch that
mixes laboratories (PBC and Raabin-WBC crops) thus trains the network to classify a cell whatever
"style" (stain, camera, white balance) its features carry. The statistics are detached, as in
the paper. It acts only in training mode, through forward hooks: the model's modules, state
dict, exported weights and inference are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MixStyleConfig:
    """``p``: probability a batch is mixed at a layer; ``alpha``: Beta parameter of the mixing
    weight; ``layers``: names of the submodules whose output is mixed (``model.named_modules``)."""

    p: float = 0.5
    alpha: float = 0.1
    layers: tuple[str, ...] = ("stem", "drdb")
    eps: float = 1e-6


def mix_style(x: torch.Tensor, alpha: float, eps: float = 1e-6,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """One MixStyle step on ``(B, C, H, W)`` features (always applied; no probability).

    Parameters
    ----------
    x : torch.Tensor
        Features of one batch.
    alpha : float
        Beta(alpha, alpha) draws each sample's weight on its own statistics.
    eps : float
        Added to the variance.
    generator : torch.Generator, optional
        CPU generator for the partners and weights (default: a fresh one seeded 0).

    Returns
    -------
    torch.Tensor
        Same shape: each sample normalised by its own statistics and re-styled with the mix.
    """
    b = x.shape[0]
    if b < 2:
        return x
    mu = x.mean(dim=(2, 3), keepdim=True).detach()
    sig = (x.var(dim=(2, 3), keepdim=True) + eps).sqrt().detach()
    normed = (x - mu) / sig
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    u = torch.rand(b, generator=gen).clamp_(1e-6, 1 - 1e-6)
    lam = _beta_from_uniform(u, alpha).view(b, 1, 1, 1)
    perm = torch.randperm(b, generator=gen)
    lam = lam.to(x.device, x.dtype)
    perm = perm.to(x.device)
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    return normed * sig_mix + mu_mix


def _beta_from_uniform(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """Beta(alpha, alpha) draws from uniforms by the inverse CDF (reproducible with a seeded
    generator, which torch's Beta sampler does not take)."""
    from scipy.stats import beta

    return torch.as_tensor(beta.ppf(u.numpy(), alpha, alpha), dtype=torch.float32)


def attach_mixstyle(model: nn.Module, cfg: MixStyleConfig, seed: int = 0) -> list:
    """Register MixStyle on ``cfg.layers`` of ``model`` (training mode only).

    Parameters
    ----------
    model : torch.nn.Module
        The network being trained (not wrapped in DistributedDataParallel yet).
    cfg : MixStyleConfig
        Where and how strongly to mix.
    seed : int
        Seeds the hooks' own generator (partners, weights, whether a batch is mixed).

    Returns
    -------
    list
        The hook handles (``handle.remove()`` detaches them).

    Raises
    ------
    ValueError
        If a named layer does not exist.
    """
    modules = dict(model.named_modules())
    missing = [n for n in cfg.layers if n not in modules or modules[n] is None]
    if missing:
        raise ValueError(f"MixStyle layers not in the model: {missing}")
    gen = torch.Generator().manual_seed(int(seed))

    def hook(module: nn.Module, _inputs, output):
        if not module.training or not torch.is_grad_enabled():
            return output
        if float(torch.rand((), generator=gen)) >= cfg.p:
            return output
        return mix_style(output, cfg.alpha, cfg.eps, gen)

    return [modules[n].register_forward_hook(hook) for n in cfg.layers]
