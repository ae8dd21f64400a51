"""Do a run's cells look like the data the classifier learned from? (label-free)

Every BatchNorm layer sees inputs whose statistics are those of the images it was trained on.
Crops from the same kind of smear give layer inputs with about those statistics; a stain,
camera, white balance or scale the model never saw moves them (the shift AdaBN undoes,
:mod:`napari_ddrnet.domain_adapt`). The score is how far, in units of the reference standard
deviation, averaged over channels and layers; a card may add how far the spread moved (the log
ratio of the run's standard deviation to the reference's, statistic ``mean+var``,
thirteenth session). The reference is either the model's running
statistics (one mixture of its training labs) or each labelled training lab's own statistics,
carried in the card, the run being compared with the lab it is most like (``per-lab``: the
default's card since the fourteenth session, ``docs/cross-source.md``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

#: Fewest crops a run needs for a verdict: the size of the draws the threshold was fixed on.
SHIFT_MIN_CROPS = 32

if TYPE_CHECKING:
    from .weights import ModelBundle

#: What a card's score reads of each layer's input: where each channel is centred (``mean``),
#: or that and how spread it is (``mean+var``); the first is the default of older cards.
STATISTICS = ("mean", "mean+var")

#: What a card's score compares a run with: the model's running statistics (one mixture of
#: its training labs), or each labelled training lab's own statistics carried in the card,
#: the nearest lab counting (``per-lab``, fourteenth session).
REFERENCES = ("running", "per-lab")

#: Per layer: (channel means, channel variances) of the layer's input.
LayerStats = list[tuple[torch.Tensor, torch.Tensor]]

# Forward hooks on a shared model see every thread's batches: one pass at a time (a dask
# worker runs several tasks on one cached model).
_HOOK_LOCK = threading.Lock()


def bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The model's BatchNorm2d layers with running statistics (an unfused model).

    Raises
    ------
    ValueError
        For a model without them (fused for inference, or GroupNorm).
    """
    layers = [m for _, m in _named_bn(model)]
    if not layers:
        raise ValueError("the shift score needs a model with BatchNorm2d running statistics")
    return layers


def bn_layer_names(model: nn.Module) -> list[str]:
    """The qualified names of :func:`bn_layers`, in the same order (how a card names them).

    Parameters
    ----------
    model : torch.nn.Module
        An unfused model.

    Returns
    -------
    list of str
        E.g. ``["stem.norm", "drdb.paths.0.body.0.1", ...]`` for DDRNet.
    """
    return [name for name, _ in _named_bn(model)]


def _named_bn(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    # One home for "a layer the score reads": BatchNorm2d that tracks running statistics.
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]


def select_layers(model: nn.Module, names: Sequence[str] | None) -> list[int]:
    """Positions in :func:`bn_layers` of the layers a card's ``shift_warning.layers`` names.

    Parameters
    ----------
    model : torch.nn.Module
        The unfused model the card belongs to.
    names : sequence of str or None
        Qualified layer names (:func:`bn_layer_names`); ``None``: every layer.

    Returns
    -------
    list of int
        Positions, in the order named.

    Raises
    ------
    ValueError
        For no names, a bare string, a name given twice, or a name the model has no such layer
        for (a card written for another architecture).
    """
    every = bn_layer_names(model)
    if names is None:
        return list(range(len(every)))
    if isinstance(names, str) or not names or len(set(names)) != len(names):
        raise ValueError(f"the shift-score card's layers must be distinct layer names, got "
                         f"{names!r}")
    missing = [n for n in names if n not in every]
    if missing:
        raise ValueError(f"the shift-score card names BatchNorm layers this model lacks: "
                         f"{missing}")
    return [every.index(n) for n in names]


@torch.no_grad()
def bn_input_moments(model: nn.Module, x: torch.Tensor, batch_size: int = 256,
                     squares: bool = True
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Per crop, the spatial mean (and mean square) of every BatchNorm2d layer's input channels.

    Parameters
    ----------
    model : torch.nn.Module
        An unfused model; it is put in eval mode for the passes and restored after.
    x : torch.Tensor
        ``(N, 3, S, S)`` crops normalised as for inference.
    batch_size : int
        Crops per forward pass.
    squares : bool
        Also return the mean squares (for variances: the ``mean+var`` statistic and
        :func:`lab_stats`).

    Returns
    -------
    means, squares : list of torch.Tensor
        One ``(N, C_layer)`` float64 tensor per layer each (``squares`` ``None`` when not
        asked for). Every crop has the same number of pixels per layer, so the mean over any
        subset of crops is the mean of its rows.
    """
    if len(x) == 0:
        raise ValueError("the shift score needs at least one crop")
    layers = bn_layers(model)
    means: list[list[torch.Tensor]] = [[] for _ in layers]
    sq: list[list[torch.Tensor]] = [[] for _ in layers]

    def hook(i):
        def fn(_mod, inp, _out):
            v = inp[0].double()
            means[i].append(v.mean(dim=(2, 3)))
            if squares:
                sq[i].append((v * v).mean(dim=(2, 3)))
        return fn

    with _HOOK_LOCK:
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
    return [torch.cat(m) for m in means], ([torch.cat(s) for s in sq] if squares else None)


def lab_stats(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> LayerStats:
    """One lab's reference: the statistics of every BatchNorm2d layer's input over its crops.

    Parameters
    ----------
    model : torch.nn.Module
        An unfused model (not modified).
    x : torch.Tensor
        ``(N, 3, S, S)`` crops of the lab (e.g. its training crops), normalised for inference.
    batch_size : int
        Crops per forward pass.

    Returns
    -------
    LayerStats
        Per layer, the channel means and variances over all crops and pixels.
    """
    return list(zip(*moments_of(*bn_input_moments(model, x, batch_size))))


def running_stats(model: nn.Module) -> LayerStats:
    """The model's own running statistics as a reference (the mixture of its training data).

    Parameters
    ----------
    model : torch.nn.Module
        An unfused model.

    Returns
    -------
    LayerStats
        Per BatchNorm2d layer, its running mean and variance (float64).
    """
    return [(m.running_mean.double(), m.running_var.double()) for m in bn_layers(model)]


def shift_from_means(means: Sequence[torch.Tensor], references: Sequence[LayerStats],
                     eps: float = 1e-5,
                     variances: Sequence[torch.Tensor] | None = None) -> float:
    """The score of a run whose per-layer input means (and variances) are given.

    Parameters
    ----------
    means : sequence of torch.Tensor
        One ``(C_layer,)`` tensor per BatchNorm2d layer: the run's input means.
    references : sequence of LayerStats
        At least one; the nearest counts.
    eps : float
        Added to the variances (BatchNorm's own eps).
    variances : sequence of torch.Tensor, optional
        The run's input variances per layer (over all pixels of its crops): the spread term
        is added (statistic ``mean+var``).

    Returns
    -------
    float
        ``mean over layers of mean over channels |mean - ref mean| / sqrt(ref var + eps)``,
        plus ``|ln sqrt((var + eps) / (ref var + eps))|`` per channel when ``variances`` are
        given; the smallest over the references.

    Raises
    ------
    ValueError
        Without references, or for a reference (or variances) of another layer count.
    """
    if not references:
        raise ValueError("the shift score needs at least one reference")
    if variances is not None and len(variances) != len(means):
        raise ValueError(f"{len(variances)} layers of variances, {len(means)} of means")
    scores = []
    for ref in references:
        if len(ref) != len(means):
            raise ValueError(f"reference has {len(ref)} layers, the model {len(means)}")
        d = []
        for i, (m, (mu, var)) in enumerate(zip(means, ref)):
            term = (m - mu).abs() / torch.sqrt(var + eps)
            if variances is not None:
                # Spread moved by a factor k reads |ln k|, whichever way (sharper or blurred).
                term = term + 0.5 * torch.log((variances[i].clamp_min(0.0) + eps)
                                              / (var + eps)).abs()
            d.append(term.mean())
        scores.append(float(torch.stack(d).mean()))
    return min(scores)


def moments_of(means: Sequence[torch.Tensor], squares: Sequence[torch.Tensor] | None,
               rows: torch.Tensor | None = None
               ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """A run's per-layer input means (and variances over all its pixels) from its crops'.

    Parameters
    ----------
    means, squares : sequence of torch.Tensor
        Per layer, ``(N, C_layer)`` per-crop means and mean squares (:func:`bn_input_moments`);
        ``squares`` ``None``: means only.
    rows : torch.Tensor, optional
        The crops of the run (indices); default all.

    Returns
    -------
    means, variances : list of torch.Tensor
        Per layer, ``(C_layer,)``; variances ``None`` without ``squares``. Every crop has the
        same pixels per layer, so pooling crops is averaging their rows.
    """
    pick = (lambda t: t) if rows is None else (lambda t: t[rows])
    mu = [pick(m).mean(0) for m in means]
    if squares is None:
        return mu, None
    return mu, [(pick(s).mean(0) - u * u).clamp_min(0.0) for s, u in zip(squares, mu)]


def shift_score(model: nn.Module, x: torch.Tensor,
                references: Sequence[LayerStats] | None = None, batch_size: int = 256,
                statistic: str = "mean") -> float:
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
    statistic : {"mean", "mean+var"}
        What is compared (:data:`STATISTICS`).

    Returns
    -------
    float
    """
    refs = list(references) if references is not None else [running_stats(model)]
    means, squares = bn_input_moments(model, x, batch_size, squares=_spread(statistic))
    mu, var = moments_of(means, squares)
    return shift_from_means(mu, refs, variances=var)


def _spread(statistic: str) -> bool:
    """Whether ``statistic`` reads the spread as well as the centre."""
    if statistic not in STATISTICS:
        raise ValueError(f"unknown shift-score statistic {statistic!r}; known: {STATISTICS}")
    return statistic == "mean+var"


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
        self._order: list[int] = []  # each kept crop's position in the run

    def add(self, crops: np.ndarray | None) -> None:
        """Offer crops to the sample.

        Parameters
        ----------
        crops : numpy.ndarray or None
            ``(N, S, S, 3)`` uint8 crops in run order; ``None`` or empty adds nothing.
        """
        if crops is None:
            return
        for crop in crops:
            if len(self._kept) < self.size:
                self._kept.append(np.array(crop, copy=True))
                self._order.append(self.n_seen)
            else:
                j = int(self._rng.integers(0, self.n_seen + 1))
                if j < self.size:
                    self._kept[j] = np.array(crop, copy=True)
                    self._order[j] = self.n_seen
            self.n_seen += 1

    def restrict(self, keep: np.ndarray) -> None:
        """Keep only the run's crops flagged in ``keep`` (e.g. the cells inside a drawn
        region): a uniform sample of the run, filtered, is a uniform sample of the kept cells.

        Parameters
        ----------
        keep : numpy.ndarray
            ``(n_seen,)`` bool, one flag per crop offered, in run order.
        """
        keep = np.asarray(keep, bool)
        if keep.shape != (self.n_seen,):
            raise ValueError(f"restrict needs one flag per crop offered ({self.n_seen}), "
                             f"got {keep.shape}")
        pairs = [(c, i) for c, i in zip(self._kept, self._order) if keep[i]]
        self._kept = [c for c, _ in pairs]
        self._order = [i for _, i in pairs]
        self.n_seen = int(keep.sum())

    @property
    def crops(self) -> np.ndarray:
        """The sampled crops, ``(n, S, S, 3)`` (``(0, 1, 1, 3)`` when none)."""
        return np.stack(self._kept) if self._kept else np.zeros((0, 1, 1, 3), np.uint8)


class RecentRuns:
    """The latest runs' crops for one model, so runs too small to judge alone (a field holds
    1-5 white cells) are judged together with the runs just before them (the widget).

    A run with at least ``min_cells`` cells is judged on its own (a sample of at most
    ``max_cells``); a smaller one together with the newest earlier runs, until ``min_cells``
    are reached. Older runs are forgotten, and a run analysed again under the same key (the
    same image and region) replaces its entry, so one odd image does not colour every later
    verdict. A run without crops gets no verdict.
    """

    def __init__(self, min_cells: int = SHIFT_MIN_CROPS, max_cells: int = SHIFT_MAX_CROPS):
        self.min_cells, self.max_cells = int(min_cells), int(max_cells)
        # key -> (sampled crops, cells of the run); insertion order = run order
        self._runs: dict[str, tuple[np.ndarray, int]] = {}

    def add(self, key: str, crops: np.ndarray | None,
            n_cells: int | None = None) -> tuple[np.ndarray, int, int]:
        """Record run ``key`` and return what to judge it on.

        Parameters
        ----------
        key : str
            Identifies the image (and region) analysed; the same key replaces its entry.
        crops : numpy.ndarray or None
            The run's ``(N, S, S, 3)`` uint8 crops, or a sample of them (a slide's
            :class:`CropSample`); ``None``: none kept, no verdict.
        n_cells : int, optional
            Cells of the run when ``crops`` is a sample of them (default ``len(crops)``).

        Returns
        -------
        crops : numpy.ndarray
            This run's crops (sampled to ``max_cells``), or pooled with the latest runs;
            empty when this run has none (no verdict for it).
        runs : int
            How many runs they come from (0 when empty).
        cells : int
            Cells of those runs (more than the crops when a run was sampled).
        """
        self._runs.pop(key, None)
        sample = CropSample(self.max_cells)
        sample.add(crops)
        if not sample.n_seen:
            return np.zeros((0, 1, 1, 3), np.uint8), 0, 0
        self._runs[key] = (sample.crops, sample.n_seen if n_cells is None
                           else max(int(n_cells), sample.n_seen))
        pooled, cells = [], 0
        for k in reversed(list(self._runs)):
            if cells >= self.min_cells:
                del self._runs[k]  # not needed for any later verdict
                continue
            c, n = self._runs[k]
            pooled.append(c)
            cells += n
        return np.concatenate(pooled), len(pooled), cells

    def discard(self, key: str) -> None:
        """Forget run ``key`` (e.g. its result was dropped), so no later verdict pools it."""
        self._runs.pop(key, None)

    def __contains__(self, key: str) -> bool:
        return key in self._runs


@dataclass(frozen=True)
class ShiftVerdict:
    """The label-free check of one run against the threshold its weights carry.

    Attributes
    ----------
    score : float
        :func:`shift_score` of the run's sampled crops with the card's statistic (the means
        when it names none), over the BatchNorm layers the card names (every layer when it
        names none).
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
        """Whether the score is above the threshold (the run looks unlike the training data)."""
        return self.score > self.threshold

    def summary(self, subject: str | None = None) -> str:
        """What the user reads when the run warns (``subject`` default "these N cells"); the
        caller adds what to do about it."""
        subject = subject or f"these {self.n_cells} cells"
        return (f"{subject} look unlike the images the classifier learned "
                f"from (label-free shift score {self.score:.3f} > {self.threshold:.3f}, "
                f"{self.n_crops} cells scored): another stain, camera, white balance, scale or "
                "image processing (resizing, compression), so classes may be wrong.")


def _min_crops(card: dict) -> int:
    return int(card.get("min_crops", SHIFT_MIN_CROPS))


def _card(bundle: ModelBundle) -> dict | None:
    """The weights' ``shift_warning`` entry, checked; ``None`` when they carry none."""
    card = bundle.meta.get("shift_warning")
    if not card:
        return None
    reference = card.get("reference", "running")
    if reference not in REFERENCES:
        raise ValueError(f"unknown shift-score reference {reference!r}; known: {REFERENCES}")
    if reference == "per-lab" and not card.get("labs"):
        raise ValueError("the shift-score card names a per-lab reference but carries no labs")
    _spread(card.get("statistic", "mean"))  # a statistic this version cannot compute: error
    return card


def card_references(card: dict, model: nn.Module, keep: Sequence[int]) -> list[LayerStats]:
    """The references a card's score compares a run with, restricted to its layers ``keep``.

    Parameters
    ----------
    card : dict
        A checked ``shift_warning`` entry.
    model : torch.nn.Module
        The unfused model it belongs to (its running statistics for a ``running`` card).
    keep : sequence of int
        The card's layers (:func:`select_layers`), in the card's order.

    Returns
    -------
    list of LayerStats
        One (the running statistics) or one per lab of a ``per-lab`` card, whose ``labs`` hold
        per lab ``{"mean": [...], "var": [...]}``, one list per layer of the card, in order.

    Raises
    ------
    ValueError
        For a per-lab entry whose layers or channels do not fit the model.
    """
    if card.get("reference", "running") == "running":
        ref = running_stats(model)
        return [[ref[i] for i in keep]]
    layers = bn_layers(model)
    sizes = [layers[i].num_features for i in keep]
    refs = []
    for lab, stats in card["labs"].items():
        mu, var = stats.get("mean", []), stats.get("var", [])
        if [len(m) for m in mu] != sizes or [len(v) for v in var] != sizes:
            raise ValueError(f"the shift-score card's statistics of {lab!r} do not fit this "
                             f"model's layers ({sizes} channels)")
        refs.append([(torch.tensor(m, dtype=torch.float64), torch.tensor(v, dtype=torch.float64))
                     for m, v in zip(mu, var)])
    return refs


def _card_spread(card: dict) -> bool:
    return _spread(card.get("statistic", "mean"))


def shift_verdict(bundle: ModelBundle, crops: np.ndarray,
                  n_cells: int | None = None) -> ShiftVerdict | None:
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

    Raises
    ------
    ValueError
        For a card naming a reference or statistic this version cannot compute, or layers the
        model lacks.
    """
    card = _card(bundle)
    if card is None or len(crops) < _min_crops(card):  # no forward pass for a small run
        return None
    verdict = verdict_from_sums(bundle, layer_sums(bundle, crops), len(crops))
    return verdict if n_cells is None else replace(verdict, n_cells=int(n_cells))


def crop_rows(bundle: ModelBundle, crops: np.ndarray | None,
              batch_size: int = 64) -> torch.Tensor | None:
    """Each crop's share of :func:`layer_sums`, one row per crop, so any subset of the crops
    (a run, a random draw of 32) is judged by adding its rows.

    Parameters
    ----------
    bundle : napari_ddrnet.weights.ModelBundle
        The weights the crops were classified with.
    crops : numpy.ndarray or None
        ``(N, S, S, 3)`` uint8 crops.
    batch_size : int
        Crops per forward pass.

    Returns
    -------
    torch.Tensor or None
        ``(N, C_total)`` float64 (``(N, 2 C_total)`` when the card's statistic reads the
        spread); ``None`` when the weights carry no threshold or there are no crops.
    """
    from .preprocess import crops_to_tensor

    card = _card(bundle)
    if card is None or crops is None or len(crops) == 0:
        return None
    x = crops_to_tensor(np.asarray(crops), "cpu", bundle.mean, bundle.std)
    means, squares = bn_input_moments(bundle.model, x, batch_size, squares=_card_spread(card))
    return torch.cat(means + (squares or []), dim=1)


def layer_sums(bundle: ModelBundle, crops: np.ndarray | None,
               batch_size: int = 64) -> np.ndarray | None:
    """What one image contributes to its run's score, small enough to send from a worker.

    Parameters
    ----------
    bundle : napari_ddrnet.weights.ModelBundle
        The weights the image was classified with.
    crops : numpy.ndarray or None
        The image's ``(N, S, S, 3)`` uint8 crops.
    batch_size : int
        Crops per forward pass (the classifier's default batch: a dense tile's pass then
        needs no more memory than its classification).

    Returns
    -------
    numpy.ndarray or None
        ``(C_total,)`` float64: the sum over crops of each crop's BatchNorm-input channel
        means, all layers flattened, followed by the same sums of mean squares when the card's
        statistic reads the spread (``(2 C_total,)``); add them up and pass to
        :func:`verdict_from_sums`. ``None`` when the weights carry no threshold or there are
        no crops.
    """
    rows = crop_rows(bundle, crops, batch_size)
    return None if rows is None else rows.sum(0).numpy()


@dataclass
class ShiftSums:
    """Added-up :func:`layer_sums` and their crop count: of a slide's tiles, a run's
    images, or a group of images (one patient's folder); :func:`verdict_from_sums` judges
    them. Sums of another length than the first (parts written with another model or card,
    e.g. by ``--resume`` across versions) are left out and counted in ``left_out``, so the
    caller can say the verdict covers fewer cells."""

    sum: np.ndarray | None = None
    n: int = 0
    left_out: int = 0

    def add(self, sums: np.ndarray | None, n: int) -> None:
        """Add one image's (or tile's) sums over ``n`` crops; ``None`` adds nothing."""
        if sums is None:
            return
        if self.sum is None:
            self.sum = sums
        elif len(sums) == len(self.sum):
            self.sum = self.sum + sums
        else:  # left out, no crash: the caller reports it
            self.left_out += n
            return
        self.n += n


def verdict_from_sums(bundle: ModelBundle, sums: np.ndarray | None,
                      n: int) -> ShiftVerdict | None:
    """The run's verdict from the added :func:`layer_sums` of all its crops.

    Parameters
    ----------
    bundle : napari_ddrnet.weights.ModelBundle
        The weights the run was classified with.
    sums : numpy.ndarray or None
        The images' :func:`layer_sums`, added.
    n : int
        Crops behind ``sums`` (every cell of the run: nothing is sampled).

    Returns
    -------
    ShiftVerdict or None
        ``None`` as for :func:`shift_verdict`.

    Raises
    ------
    ValueError
        For a card naming a reference or statistic this version cannot compute, layers the
        model lacks (:func:`select_layers`), or sums of another length than the card needs.
    """
    card = _card(bundle)
    if card is None or sums is None or n < _min_crops(card):
        return None
    ref = running_stats(bundle.model)  # its channel counts split the sums
    flat = torch.as_tensor(np.asarray(sums, np.float64)) / n
    sizes = [len(mu) for mu, _ in ref]
    spread = _card_spread(card)
    if len(flat) != sum(sizes) * (2 if spread else 1):
        raise ValueError(f"{len(flat)} summed moments do not fit this model's card "
                         f"({sum(sizes)} channels, statistic {card.get('statistic', 'mean')})")
    parts = list(torch.split(flat, sizes * (2 if spread else 1)))
    means = parts[:len(sizes)]
    # Mean squares less the squared mean: each layer's variance over all pixels of the run.
    var = [(s - m * m).clamp_min(0.0) for s, m in zip(parts[len(sizes):], means)]
    # The card may score a subset of the layers (docs/cross-source.md, twelfth session).
    keep = select_layers(bundle.model, card.get("layers"))
    score = shift_from_means([means[i] for i in keep], card_references(card, bundle.model, keep),
                             variances=[var[i] for i in keep] if spread else None)
    return ShiftVerdict(score, float(card["threshold"]), n, n)
