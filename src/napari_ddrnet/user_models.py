"""Where a user's own (adapted) models live, and which models the widget can offer.

Adapted models are written to the user's data directory (``$NAPARI_DDRNET_HOME`` if set, else
``$XDG_DATA_HOME/napari-ddrnet/models`` or ``~/.local/share/napari-ddrnet/models``; on Windows
``%APPDATA%``), each as ``NAME.safetensors`` with its ``NAME.json`` card, so they survive
reinstalling the plugin and are never mixed with the shipped weights.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .weights import DEFAULT_WEIGHTS, WEIGHTS_DIR, read_card

SHIPPED_NAME = "shipped"


@dataclass(frozen=True)
class ModelEntry:
    """A model the user can pick: a display name, its weights file and its card."""

    name: str
    path: Path
    card: dict


def user_models_dir() -> Path:
    """The folder of the user's models (not created here)."""
    env = os.environ.get("NAPARI_DDRNET_HOME")
    if env:
        return Path(env) / "models"
    if sys.platform.startswith("win"):
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "napari-ddrnet" / "models"


def list_models() -> list[ModelEntry]:
    """The shipped default first, then the other models in the package (by name), then the
    user's models (newest first) that have a card.

    A file without a readable card is skipped here; loading checks the checksum anyway.
    """
    entries = [ModelEntry(SHIPPED_NAME, DEFAULT_WEIGHTS, read_card(DEFAULT_WEIGHTS) or {})]
    for path in sorted(WEIGHTS_DIR.glob("*.safetensors")):
        card = read_card(path)
        if path != DEFAULT_WEIGHTS and card is not None:
            entries.append(ModelEntry(f"{path.stem} (packaged)", path, card))
    folder = user_models_dir()
    if folder.is_dir():
        files = sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime,
                       reverse=True)
        for path in files:
            card = read_card(path)
            if card is not None:
                entries.append(ModelEntry(path.stem, path, card))
    return entries


__all__ = ["ModelEntry", "SHIPPED_NAME", "list_models", "user_models_dir"]
