"""Shared fixtures: dataset location, the synthetic smear, one classifier for the session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the `training` package lives at the repository root

os.environ.setdefault("OMP_NUM_THREADS", "2")

from training.paths import data_root, has_dataset  # noqa: E402


def needs_data(name: str):
    """Skip marker for tests that read ``$DDRNET_DATA/<name>``."""
    return pytest.mark.skipif(not has_dataset(name),
                              reason=f"dataset '{name}' not found under {data_root()} "
                                     "(set DDRNET_DATA)")


@pytest.fixture(scope="session")
def classifier():
    from napari_ddrnet.classify import Classifier

    return Classifier(device="cpu")


@pytest.fixture(scope="session")
def smear():
    from napari_ddrnet.synthetic import synthetic_smear

    return synthetic_smear(pixel_size_um=0.1, seed=0)


def pbc_test_files(per_class: int) -> list[Path]:
    """The first ``per_class`` PBC test exports of each class (splits.csv order)."""
    import csv

    picked: dict[str, list[str]] = {}
    for r in csv.DictReader(open(data_root() / "pbc" / "splits.csv", newline="")):
        if r["split"] == "test" and len(picked.setdefault(r["class"], [])) < per_class:
            picked[r["class"]].append(r["file"])
    return [data_root() / "pbc" / f for fs in picked.values() for f in fs]


def pbc_mosaic(gains=(1.0, 1.0, 1.0)):
    """36 PBC test exports (up to 5 per class) side by side, 6 x 6, optionally colour-cast."""
    import numpy as np
    from PIL import Image

    files = pbc_test_files(5)[:36]
    tiles = [np.asarray(Image.open(f).convert("RGB"))[:128, :128] for f in files]
    rows = [np.concatenate(tiles[i:i + 6], axis=1) for i in range(0, 36, 6)]
    mosaic = np.concatenate(rows, axis=0).astype(np.float32) * np.asarray(gains, np.float32)
    return mosaic.clip(0, 255).round().astype(np.uint8)
