"""Do a run's cells look like the data the classifier learned from? (label-free)

Every BatchNorm layer sees inputs whose statistics are those of the images it was trained on.
Crops from the same kind of smear give layer inputs with about those statistics; a stain,
camera, white balance or scale the model never saw moves them (the shift AdaBN undoes,
:mod:`napari_ddrnet.domain_adapt`). The score is how far, in units of the reference standard
deviation, averaged over channels and layers. The reference is either the model's running
statistics (one mixture of its training labs) or each labelled training lab's own statistics,
the run being compared with the lab it is most like (``docs/cross-source.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

#: Fewest crops a run needs for a verdict: the size of the draws the threshold was fixed on.
SHIFT_MIN_CROPS = 32

#: Per layer: (channel means, channel variances) of the layer's input.
LayerStats = list[tuple[torch.Tensor, torch.Tensor]]


def bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The model's BatchNorm2d layers with running statistics (an unfused model).

    Raises
    ------
    ValueError
        For a model without them (fused for inference, or GroupNorm).
    """
    layers = [m for m in model.modules()
              if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]
    if not layers:
        raise ValueError("the shift score needs a model with BatchNorm2d running statistics")
    return layers


@torch.no_grad()
def bn_input_moments(model: nn.Module, x: torch.Tensor, batch_size: int = 256
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per crop, the spatial mean and mean square of every BatchNorm2d layer's input channels.

    Parameters
    ----------
    model : torch.nn.Module
        An unfused model; it is put in eval mode for the passes and restored after.
    x : torch.Tensor
        ``(N, 3, S, S)`` crops normalised as for inference.
    batch_size : int
        Crops per forward pass.

    Returns
    -------
    means, squares : list of torch.Tensor
        One ``(N, C_layer)`` float64 tensor per layer each. Every crop has the same number of
        pixels per layer, so the mean over any subset of crops is the mean of its rows.
    """
    if len(x) == 0:
        raise ValueError("the shift score needs at least one crop")
    layers = bn_layers(model)
    means: list[list[torch.Tensor]] = [[] for _ in layers]
    squares: list[list[torch.Tensor]] = [[] for _ in layers]

    def hook(i):
        def fn(_mod, inp, _out):
            v = inp[0].double()
            means[i].append(v.mean(dim=(2, 3)))
            squares[i].append((v * v).mean(dim=(2, 3)))
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
    return [torch.cat(m) for m in means], [torch.cat(s) for s in squares]


def lab_stats(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> LayerStats:
    """Mean and variance of every BatchNorm2d layer's input over all crops and pixels of ``x``
    (one lab's reference, e.g. its training crops)."""
    means, squares = bn_input_moments(model, x, batch_size)
    out = []
    for m, s in zip(means, squares):
        mu = m.mean(0)
        out.append((mu, (s.mean(0) - mu * mu).clamp_min(0.0)))
    return out


def running_stats(model: nn.Module) -> LayerStats:
    """The model's own running statistics as a reference (the mixture of its training data)."""
    return [(m.running_mean.double(), m.running_var.double()) for m in bn_layers(model)]


def shift_from_means(means: Sequence[torch.Tensor], references: Sequence[LayerStats],
                     eps: float = 1e-5) -> float:
    """The score of a run whose per-layer input means are ``means`` (one ``(C,)`` per layer).

    ``mean over layers of mean over channels |mean - ref mean| / sqrt(ref var + eps)``, the
    smallest over the references.
    """
    if not references:
        raise ValueError("the shift score needs at least one reference")
    scores = []
    for ref in references:
        if len(ref) != len(means):
            raise ValueError(f"reference has {len(ref)} layers, the model {len(means)}")
        d = [((m - mu).abs() / torch.sqrt(var + eps)).mean() for m, (mu, var) in zip(means, ref)]
        scores.append(float(torch.stack(d).mean()))
    return min(scores)


def shift_score(model: nn.Module, x: torch.Tensor,
                references: Sequence[LayerStats] | None = None, batch_size: int = 256) -> float:
    """Label-free distance of crops ``x`` from the training data (0 = alike; see module doc).

    Parameters
    ----------
    model : torch.nn.Module
        An unfused model in eval mode (not modified).
    x : torch.Tensor
        ``(N, 3, S, S)`` crops normalised as for inference.
    references : sequence of LayerStats, optional
        One per labelled training lab; default the model's running statistics.
    batch_size : int
        Crops per forward pass.

    Returns
    -------
    float
    """
    refs = list(references) if references is not None else [running_stats(model)]
    means, _ = bn_input_moments(model, x, batch_size)
    return shift_from_means([m.mean(0) for m in means], refs)


#: Most crops scored per run: a seeded uniform sample of the run keeps the check quick.
SHIFT_MAX_CROPS = 256


class CropSample:
    """A uniform, seeded sample (reservoir) of up to ``size`` crops of a run, fed batch by
    batch, so a run of any length is checked on a bounded, reproducible set of crops.

    Parameters
    ----------
    size : int
        Crops kept at most.
    seed : int
        The same crops in the same order give the same sample.
    """

    def __init__(self, size: int = SHIFT_MAX_CROPS, seed: int = 0) -> None:
        self.size = int(size)
        self.n_seen = 0
        self._rng = np.random.default_rng(seed)
        self._kept: list[np.ndarray] = []

    def add(self, crops: np.ndarray | None) -> None:
        """Offer ``(N, S, S, 3)`` crops to the sample (``None`` or empty: nothing)."""
        if crops is None:
            return
        for crop in crops:
            if len(self._kept) < self.size:
                self._kept.append(np.array(crop, copy=True))
            else:
                j = int(self._rng.integers(0, self.n_seen + 1))
                if j < self.size:
                    self._kept[j] = np.array(crop, copy=True)
            self.n_seen += 1

    @property
    def crops(self) -> np.ndarray:
        """The sampled crops, ``(n, S, S, 3)`` (``(0, 1, 1, 3)`` when none)."""
        return np.stack(self._kept) if self._kept else np.zeros((0, 1, 1, 3), np.uint8)


@dataclass(frozen=True)
class ShiftVerdict:
    """The label-free check of one run against the threshold its weights carry.

    Attributes
    ----------
    score : float
        :func:`shift_score` of the run's sampled crops.
    threshold : float
        Fixed on the selection sets when the weights were made (their card's ``shift_warning``).
    n_crops : int
        Crops the score was computed on.
    n_cells : int
        Cells in the run.
    """

    score: float
    threshold: float
    n_crops: int
    n_cells: int

    @property
    def warns(self) -> bool:
        return self.score > self.threshold

    def summary(self, subject: str | None = None) -> str:
        """What the user reads when the run warns (``subject`` default "these N cells"); the
        caller adds what to do about it."""
        subject = subject or f"these {self.n_cells} cells"
        return (f"{subject} look unlike the images the classifier learned "
                f"from (label-free shift score {self.score:.3f} > {self.threshold:.3f}, "
                f"{self.n_crops} cells scored): another stain, camera, white balance or scale, "
                "so classes may be wrong.")


def shift_verdict(bundle, crops: np.ndarray, n_cells: int | None = None) -> ShiftVerdict | None:
    """Check a run's crops against the threshold the weights carry.

    Parameters
    ----------
    bundle : napari_ddrnet.weights.ModelBundle
        Weights whose card has a ``shift_warning`` entry (a threshold fixed with
        ``benchmarks.domain_shift``); other weights (user-adapted, older) are not checked.
    crops : numpy.ndarray
        ``(N, S, S, 3)`` uint8 crops as classified, e.g. :attr:`CropSample.crops`.
    n_cells : int, optional
        Cells in the run (default ``len(crops)``).

    Returns
    -------
    ShiftVerdict or None
        ``None`` when the weights carry no threshold or the run has too few crops for one.
    """
    from .preprocess import crops_to_tensor

    card = bundle.meta.get("shift_warning")
    if not card:
        return None
    if card.get("reference", "running") != "running":
        raise ValueError(f"unknown shift-score reference {card.get('reference')!r}")
    if len(crops) < int(card.get("min_crops", SHIFT_MIN_CROPS)):
        return None
    x = crops_to_tensor(np.asarray(crops), "cpu", bundle.mean, bundle.std)
    score = shift_score(bundle.model, x)
    return ShiftVerdict(score, float(card["threshold"]), len(crops),
                        int(n_cells if n_cells is not None else len(crops)))


def layer_mean_sums(bundle, crops: np.ndarray | None) -> np.ndarray | None:
    """Sum over ``crops`` of each crop's BatchNorm-input channel means, all layers flattened
    (``(C_total,)`` float64): what one image contributes to its run's score, small enough to
    send from a worker and add up (see :func:`verdict_from_sums`).

    ``None`` when the weights carry no ``shift_warning`` threshold or there are no crops.
    """
    from .preprocess import crops_to_tensor

    if not bundle.meta.get("shift_warning") or crops is None or len(crops) == 0:
        return None
    means, _ = bn_input_moments(bundle.model, crops_to_tensor(np.asarray(crops), "cpu",
                                                              bundle.mean, bundle.std))
    return torch.cat([m.sum(0) for m in means]).numpy()


def verdict_from_sums(bundle, sums: np.ndarray | None, n: int) -> ShiftVerdict | None:
    """The run's verdict from the added :func:`layer_mean_sums` of its ``n`` crops (every
    crop of the run, so nothing is sampled); ``None`` as for :func:`shift_verdict`."""
    card = bundle.meta.get("shift_warning")
    if not card or sums is None or n < int(card.get("min_crops", SHIFT_MIN_CROPS)):
        return None
    if card.get("reference", "running") != "running":
        raise ValueError(f"unknown shift-score reference {card.get('reference')!r}")
    ref = running_stats(bundle.model)
    flat = torch.as_tensor(np.asarray(sums, np.float64)) / n
    means = list(torch.split(flat, [len(mu) for mu, _ in ref]))
    return ShiftVerdict(shift_from_means(means, [ref]), float(card["threshold"]), n, n)
