"""Load the shipped (or a user's) DDRNet weights safely: safetensors + JSON metadata + sha256.

No pickle is ever read: tensors come from a ``.safetensors`` file, everything else from a JSON
file beside it, and the tensor file's SHA-256 must match the one recorded in the metadata.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .architectures import build_architecture

WEIGHTS_DIR = Path(__file__).with_name("weights")
DEFAULT_WEIGHTS = WEIGHTS_DIR / "ddrnet_wbc8_v8.safetensors"


class WeightsError(RuntimeError):
    """Weights that are missing, corrupt, tampered with or for another architecture."""


#: Card keys every weights file must carry: the model is useless without its transforms.
REQUIRED_KEYS = ("architecture", "classes", "config", "input_size", "crop_fov_um", "mean", "std",
                 "sha256")


@dataclass(frozen=True)
class ModelBundle:
    """A ready model and the transforms it was trained with (torchvision's convention: the
    weights carry their preprocessing, so inference can never crop or scale them wrongly).

    Attributes
    ----------
    model : torch.nn.Module
        The network in eval mode, returning logits.
    classes : tuple of str
    input_size : int
        Side of the square input, pixels.
    crop_fov_um : float
        Physical width of a crop, micrometres (see :mod:`napari_ddrnet.crop`).
    mean, std : tuple of float
        Per-channel normalisation of 0..1 RGB.
    meta : dict
        The whole card.
    """

    model: torch.nn.Module
    classes: tuple[str, ...]
    input_size: int
    crop_fov_um: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    meta: dict

    @property
    def name(self) -> str:
        """The model's name from its card (``ddrnet_wbc8_v5``, ``adapted-…``; the file name
        when the card has none), as CELLS.csv's ``model`` column and the widget's status
        report it."""
        return str(self.meta.get("name", ""))


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_path(weights: str | Path | None) -> Path:
    """The weights file ``weights`` names; ``None``: the shipped default.

    A bare name that is not a file here (no folder) names a model by its name, with or
    without ``.safetensors``: a packaged one (``ddrnet_wbc8_v5``), else one of the user's
    adapted models (:func:`napari_ddrnet.user_models.user_models_dir`; names may hold dots,
    ``lab_v1.2``). Anything else is a path as given.
    """
    if weights is None:
        return DEFAULT_WEIGHTS
    path = Path(weights)
    if path.is_file() or len(path.parts) != 1:
        return path
    name = path.name if path.suffix == ".safetensors" else f"{path.name}.safetensors"
    for folder in (WEIGHTS_DIR, _user_folder()):
        if (folder / name).is_file():
            return folder / name
    return path


def packaged_names() -> list[str]:
    """Names of the models in the package, for messages (the default first)."""
    others = sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors") if p != DEFAULT_WEIGHTS)
    return [DEFAULT_WEIGHTS.stem, *others]


def _user_folder() -> Path:
    from .user_models import user_models_dir  # it imports this module

    return user_models_dir()


def metadata_path(weights: Path) -> Path:
    return Path(weights).with_suffix(".json")


def read_card(weights: str | Path | None = None) -> dict | None:
    """The card beside the weights ``weights`` names (:func:`weights_path`), without loading or
    checking the tensors; ``None`` when it cannot be read or is not a JSON object (loading the
    weights, :func:`load_bundle`, then says why)."""
    try:
        card = json.loads(metadata_path(weights_path(weights)).read_text())
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None


def card_input_size(weights: str | Path | None = None) -> int | None:
    """The crop side the weights' card declares, read without loading the tensors (for memory
    estimates before a run).

    Parameters
    ----------
    weights : str, pathlib.Path or None
        As for :func:`weights_path` (``None``: the shipped default).

    Returns
    -------
    int or None
        The card's ``input_size``; ``None`` when the card cannot be read or declares a size
        :func:`load_bundle` would refuse (outside 8-1024 px): the run itself then says why.
    """
    try:
        size = int((read_card(weights) or {})["input_size"])
    except (KeyError, TypeError, ValueError):
        return None
    return size if 8 <= size <= 1024 else None


def load_bundle(weights: str | Path | None = None) -> ModelBundle:
    """Load and verify weights; ``None`` means the weights shipped in the package.

    Raises
    ------
    WeightsError
        When the file or its metadata is missing, the checksum does not match, or the tensors do
        not fit the architecture described in the metadata.
    """
    path = weights_path(weights)
    meta_file = metadata_path(path)
    if not path.is_file():
        hint = ""
        if len(path.parts) == 1:
            hint = (" (not a file, nor the name of a packaged model: "
                    f"{', '.join(packaged_names())}, nor of one in {_user_folder()})")
        raise WeightsError(f"Model weights not found: {path}{hint}")
    if not meta_file.is_file():
        raise WeightsError(f"Model metadata not found beside the weights: {meta_file}")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"Model metadata {meta_file} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise WeightsError(f"Model metadata {meta_file} is not a JSON object")
    if not meta.get("name"):  # a card without a name: CSVs and the status use the file's
        meta["name"] = path.stem
    expected = meta.get("sha256")
    actual = sha256_file(path)
    if not expected or actual != expected:
        raise WeightsError(
            f"Checksum mismatch for {path.name}: expected {expected}, got {actual}. The file is "
            "corrupt or was replaced; reinstall napari-ddrnet or pick the right weights."
        )
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a broken header
        raise WeightsError(f"Cannot read weights {path}: {exc}") from exc
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise WeightsError(f"Model metadata {meta_file.name} lacks {', '.join(missing)}: these "
                           "weights were not exported by napari-ddrnet.")
    try:
        classes = tuple(str(c) for c in meta["classes"])
        input_size = int(meta["input_size"])
        fov = float(meta["crop_fov_um"])
        mean = tuple(float(v) for v in meta["mean"])
        std = tuple(float(v) for v in meta["std"])
        if not (8 <= input_size <= 1024 and 1.0 <= fov <= 500.0 and len(mean) == len(std) == 3
                and min(std) > 0):
            raise ValueError(f"implausible transforms (input_size={input_size}, "
                             f"crop_fov_um={fov}, mean={mean}, std={std})")
        model = build_architecture(str(meta["architecture"]), meta["config"], len(classes))
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise WeightsError(
            f"Weights {path.name} do not fit the {meta.get('architecture')} architecture "
            f"described beside them: {exc}") from exc
    model.eval()
    return ModelBundle(model, classes, input_size, fov, mean, std, meta)


def export_weights(state: dict[str, torch.Tensor], meta: dict, path: Path) -> dict:
    """Write ``path`` (.safetensors) and its JSON metadata with the SHA-256 filled in.

    Both files are written completely to unique temporary names first and only then renamed
    into place, back to back: a crash while writing leaves any earlier model untouched, and a
    pair that was somehow mixed is refused by the checksum on loading.
    """
    import os
    import tempfile

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temps = []
    try:
        for suffix in (".safetensors", ".json"):
            fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix + ".tmp",
                                        dir=path.parent)
            os.close(fd)
            temps.append(Path(name))
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(temps[0]))
        meta = dict(meta, sha256=sha256_file(temps[0]))
        temps[1].write_text(json.dumps(meta, indent=1))
        for tmp in temps:
            tmp.chmod(0o644)
        temps[0].replace(path)
        temps[1].replace(metadata_path(path))
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return meta
