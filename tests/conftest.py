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
