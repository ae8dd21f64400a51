"""Batched DDRNet inference on cell crops, with a CellaVision-style 'unidentified' class."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import torch

from .classes import DEFAULT_MIN_CONFIDENCE, UNIDENTIFIED
from .devices import resolve_device
from .model import fuse_for_inference
from .preprocess import crops_to_tensor
from .weights import ModelBundle, load_bundle

#: Smallest batch a forward pass sees: CPU kernels for small batches round differently from
#: larger ones (last bit): batches of 1-5 crops on an AVX2 CPU, of 1-11 but 4 and 8 on an
#: AVX-512 one (AMD EPYC, 2026-12-06; docs/results/batching_2026-12-06). Shorter chunks are
#: padded to this size.
MIN_FORWARD_BATCH = 16

__all__ = ["Classifier", "check_min_confidence", "probabilities_to_table", "resolve_device"]


#: Fewest crops :meth:`Classifier.adapted_to_lab` accepts: AdaBN on LISC gains as much from 32
#: random crops as from all 1,287, and is unstable below (``docs/cross-source.md``).
MIN_LAB_CROPS = 32


class Classifier:
    """DDRNet cell classifier.

    Parameters
    ----------
    weights : str or Path, optional
        ``.safetensors`` file with a JSON beside it; default: the weights shipped in the package.
    device : {"auto", "cpu", "cuda", "mps"}
        Where to run; mixed precision (fp16) is used on GPUs.
    batch_size : int
        Crops per forward pass.
    tta : bool
        Test-time augmentation: average the probabilities over the 8 rotations/flips of each
        crop (a cell has no orientation). For the shipped model it lifts PBC test accuracy and
        BCCD end-to-end accuracy (``python -m benchmarks.accuracy`` prints both, with and
        without), for 8x the (small) classification time.
    """

    def __init__(self, weights=None, device: str = "auto", batch_size: int = 64,
                 tta: bool = True):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.bundle: ModelBundle = load_bundle(weights)
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.tta = bool(tta)
        # Fuse a copy: bundle.model keeps its BatchNorm layers (AdaBN, fine-tuning need them).
        model = fuse_for_inference(copy.deepcopy(self.bundle.model))
        self.model = model.to(self.device).to(memory_format=torch.channels_last)
        self.amp = self.device.type in ("cuda", "mps")
        #: LAB colour statistics of the lab this classifier was adapted to (see
        #: :meth:`adapted_to_lab`); ``None`` for the model as trained.
        self.lab_colour: tuple[np.ndarray, np.ndarray] | None = None

    def adapted_to_lab(self, crops: np.ndarray) -> Classifier:
        """A copy adapted to a new laboratory from that lab's own crops (no labels needed).

        The crops' colours are mapped to the training data's (Reinhard colour transfer in LAB,
        with this set's statistics) and every BatchNorm layer's statistics are re-estimated on
        them (AdaBN). On LISC, a lab never trained on, this lifts the shipped model from
        about 45 % to about 70 % (``docs/cross-source.md``); on images like the training data it
        costs accuracy, so it is opt-in ("new lab" mode), never the default.

        Parameters
        ----------
        crops : numpy.ndarray
            ``(N, S, S, 3) uint8`` crops of the new lab, several classes mixed; at least
            :data:`MIN_LAB_CROPS` (below that the statistics are too noisy to help).

        Raises
        ------
        ValueError
            With too few crops.
        """
        from .domain_adapt import adapt_batchnorm, lab_mean_std, reinhard_normalize

        if len(crops) < MIN_LAB_CROPS:
            raise ValueError(f"adapting to a new lab needs at least {MIN_LAB_CROPS} cells, "
                             f"got {len(crops)}")
        colour = lab_mean_std(crops)
        x = crops_to_tensor(reinhard_normalize(crops, source_mean_std=colour), "cpu",
                            self.bundle.mean, self.bundle.std)
        adapted = copy.copy(self)
        # Its calls are not the model's as trained: CELLS.csv's ``model`` column says so.
        adapted.bundle = dataclasses.replace(
            self.bundle, meta={**self.bundle.meta, "name": f"{self.bundle.name}+new-lab"})
        model = adapt_batchnorm(self.bundle.model, x)
        adapted.model = fuse_for_inference(model).to(self.device).to(
            memory_format=torch.channels_last)
        adapted.lab_colour = colour
        return adapted

    @property
    def classes(self) -> tuple[str, ...]:
        return self.bundle.classes

    @property
    def input_size(self) -> int:
        """Side of the model's square input, pixels (from the weights card)."""
        return self.bundle.input_size

    @property
    def crop_fov_um(self) -> float:
        """Physical width of the model's crops, micrometres (from the weights card)."""
        return self.bundle.crop_fov_um

    @torch.inference_mode()
    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        """Softmax probabilities ``(N, n_classes)`` for ``(N, S, S, 3) uint8`` crops."""
        n = len(crops)
        out = np.empty((n, len(self.classes)), np.float32)
        if self.lab_colour is not None and n:
            from .domain_adapt import reinhard_normalize

            crops = reinhard_normalize(crops, source_mean_std=self.lab_colour)
        for i in range(0, n, self.batch_size):
            chunk = crops[i:i + self.batch_size]
            m = len(chunk)
            x = crops_to_tensor(chunk, self.device, self.bundle.mean,
                                self.bundle.std).contiguous(memory_format=torch.channels_last)
            views = _dihedral(x) if self.tta else [x]
            n_views, per_batch = len(views), 1
            if m < MIN_FORWARD_BATCH:
                # CPU kernels for tiny batches round differently, so a short chunk must reach
                # MIN_FORWARD_BATCH for a crop's probabilities not to depend on how crops were
                # batched (a tile's few cells classified alone give the bits a whole-slide
                # batch gives). With TTA its 8 views stacked make one batch of 8 m (padded to
                # 16 crop passes for a lone cell, not 128 with each view padded); else blanks
                # pad it.
                pad = torch.zeros((max(0, MIN_FORWARD_BATCH - m * n_views), *x.shape[1:]),
                                  dtype=x.dtype, device=x.device)
                views, per_batch = [torch.cat([*views, pad])], n_views
            probs = 0
            # One batch at a time: peak memory stays that of one batch, TTA or not.
            for v in views:
                with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                    logits = self.model(v.contiguous(memory_format=torch.channels_last))
                p = torch.softmax(logits.float(), 1)
                # Views stacked in one batch are summed in view order, as separate ones are.
                for part in p.split(m)[:per_batch]:
                    probs = probs + part
            out[i:i + m] = (probs / n_views).cpu().numpy()
        return out

    def classify(self, crops: np.ndarray,
                 min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> pd.DataFrame:
        """Class, confidence and per-class probabilities for each crop.

        A crop whose top probability is below ``min_confidence`` is ``unidentified`` (its
        probabilities are still reported), rather than forced into a class.
        """
        probs = self.predict_proba(crops)
        return probabilities_to_table(probs, self.classes, min_confidence)


def _dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations/reflections of a ``(N, C, H, W)`` batch."""
    rots = [torch.rot90(x, k, (2, 3)) for k in range(4)]
    return rots + [torch.flip(r, (3,)) for r in rots]


def check_min_confidence(value: float, name: str = "min_confidence") -> float:
    """``value`` as a float if it is a valid minimum confidence (0..1), else ``ValueError``
    naming it as ``name`` (e.g. the command-line flag)."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
    return float(value)


def probabilities_to_table(probs: np.ndarray, classes, min_confidence: float) -> pd.DataFrame:
    """Turn a probability matrix into ``class``, ``confidence`` and ``prob_<class>`` columns."""
    check_min_confidence(min_confidence)
    classes = list(classes)
    if len(probs):
        best = probs.argmax(1)
        conf = probs[np.arange(len(probs)), best]
        names = np.where(conf >= min_confidence, np.asarray(classes, dtype=object)[best],
                         UNIDENTIFIED)
    else:
        conf = np.zeros(0, np.float32)
        names = np.zeros(0, dtype=object)
    table = pd.DataFrame({"class": pd.Series(names, dtype=object),
                          "confidence": conf.astype(np.float64)})
    for j, c in enumerate(classes):
        table[f"prob_{c}"] = probs[:, j].astype(np.float64) if len(probs) else np.zeros(0)
    return table
