"""AdaBN and Reinhard colour normalisation (napari_ddrnet.domain_adapt)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_ddrnet.domain_adapt import (
    PBC_LAB_MEAN_STD,
    adapt_batchnorm,
    lab_mean_std,
    reinhard_normalize,
)
from napari_ddrnet.model import DDRNet, DDRNetConfig, fuse_for_inference


def _model(norm: str = "batch") -> DDRNet:
    torch.manual_seed(0)
    return DDRNet(DDRNetConfig(num_classes=5, norm=norm)).eval()


def _stem_stats(model: DDRNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        f = model.stem.pool(model.stem.conv(x))
    return f.mean((0, 2, 3)), f.var((0, 2, 3))


def test_adabn_recomputes_statistics_on_the_target_and_copies():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(64, 3, 64, 64) * 0.7 + 0.3  # a "shifted lab"
    adapted = adapt_batchnorm(model, x)
    assert adapted is not model and not adapted.training
    for k, v in model.state_dict().items():  # the source model is untouched
        assert torch.equal(v, before[k]), k
    mean, var = _stem_stats(model, x)
    assert torch.allclose(adapted.stem.norm.running_mean, mean, atol=1e-4)
    assert torch.allclose(adapted.stem.norm.running_var, var, rtol=1e-3)
    # Dropout stays off: the adapted model is deterministic.
    assert torch.equal(adapted(x[:4]), adapted(x[:4]))


def test_adabn_in_chunks_matches_one_pass():
    model = _model()
    x = torch.randn(96, 3, 64, 64)
    one = adapt_batchnorm(model, x, batch_size=96)
    chunks = adapt_batchnorm(model, x, batch_size=32)
    assert torch.allclose(one.stem.norm.running_mean, chunks.stem.norm.running_mean, atol=1e-4)


def test_adabn_momentum_blends_source_and_target():
    model = _model()
    src = model.stem.norm.running_mean.clone()
    x = torch.randn(32, 3, 64, 64) + 0.5
    adapted = adapt_batchnorm(model, x, momentum=0.25)
    mean, _ = _stem_stats(model, x)
    assert torch.allclose(adapted.stem.norm.running_mean, 0.75 * src + 0.25 * mean, atol=1e-4)


def test_adabn_head_can_keep_source_statistics():
    model = _model()
    adapted = adapt_batchnorm(model, torch.randn(16, 3, 64, 64), include_1d=False)
    assert torch.equal(adapted.bn.running_mean, model.bn.running_mean)
    assert not torch.equal(adapted.stem.norm.running_mean, model.stem.norm.running_mean)


def test_adabn_leaves_groupnorm_models_unchanged():
    model = _model("group")
    adapted = adapt_batchnorm(model, torch.randn(8, 3, 64, 64), include_1d=False)
    for (k, a), b in zip(adapted.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_adabn_refuses_a_fused_model_and_no_crops():
    fused = fuse_for_inference(_model())
    with pytest.raises(ValueError, match="unfused"):
        adapt_batchnorm(fused, torch.randn(4, 3, 64, 64))
    with pytest.raises(ValueError):
        adapt_batchnorm(_model(), torch.zeros(0, 3, 64, 64))


def _crops(n=12, seed=0):
    # Smear-like colours: light, low chroma (no gamut clipping after the transfer).
    rng = np.random.default_rng(seed)
    grey = rng.integers(110, 220, (n, 8, 8, 1))
    base = np.clip(grey + rng.integers(-25, 25, (n, 8, 8, 3)), 0, 255).astype(np.uint8)
    return np.repeat(np.repeat(base, 8, 1), 8, 2)


def test_reinhard_maps_lab_statistics_to_the_target():
    crops = _crops()
    out = reinhard_normalize(crops)
    assert out.shape == crops.shape and out.dtype == np.uint8
    mean, std = lab_mean_std(out)
    t_mean, t_std = (np.asarray(v) for v in PBC_LAB_MEAN_STD)
    assert np.allclose(mean, t_mean, atol=2.5) and np.allclose(std, t_std, rtol=0.15)
    # Normalising to the crops' own statistics is (up to rounding and gamut) the identity.
    same = reinhard_normalize(crops, lab_mean_std(crops))
    assert np.abs(same.astype(int) - crops).max() <= 2


def test_reinhard_single_image_and_per_image():
    crops = _crops(4)
    one = reinhard_normalize(crops[0])
    assert one.shape == crops[0].shape and one.dtype == np.uint8
    per = reinhard_normalize(crops, per_image=True)
    for c in per:
        m, _ = lab_mean_std(c[None])
        assert np.allclose(m, PBC_LAB_MEAN_STD[0], atol=3)


def test_adabn_chunks_do_not_depend_on_crop_order():
    """Crops in class order (two very different halves) must not shrink the variance estimate:
    chunks are drawn from a shuffled set."""
    model = _model()
    x = torch.cat([torch.randn(64, 3, 64, 64) - 1, torch.randn(64, 3, 64, 64) + 1])
    one = adapt_batchnorm(model, x, batch_size=128)
    chunked = adapt_batchnorm(model, x, batch_size=64)
    assert torch.allclose(chunked.stem.norm.running_var, one.stem.norm.running_var, rtol=0.1)
