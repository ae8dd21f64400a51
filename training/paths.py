"""Where the shared datasets live: ``$DDRNET_DATA``, defaulting to ``../shared/data``."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """Root of the shared datasets (``bccd/``, ``pbc/``, ``kaggle_blood_cells/``)."""
    env = os.environ.get("DDRNET_DATA")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data").resolve()


def has_dataset(name: str) -> bool:
    """True when ``data_root()/name`` exists and is readable."""
    return (data_root() / name).is_dir()
