"""The not-specimen mask's channel maximum (napari_ddrnet.specimen)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ddrnet.specimen import channel_max


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("channels", [3, 4])
def test_channel_max_is_numpys_reduction_bit_for_bit(dtype, channels):
    """The fast per-plane maximum gives what ``rgb.max(axis=-1)`` gives, on views (the
    segmentation passes a border-cropped view) and with NaN in float images."""
    rng = np.random.default_rng(0)
    rgb = (rng.random((61, 47, channels)) * 250).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        rgb[3, 5, 1] = np.nan
        rgb[7, 2, channels - 1] = np.nan
    for a in (rgb, rgb[2:-2, 3:-1], rgb[::2, ::3]):
        got, want = channel_max(a), a.max(axis=-1)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)  # NaN where numpy has NaN
    assert np.isnan(channel_max(rgb)[3, 5]) == np.issubdtype(dtype, np.floating)
    before = rgb.copy()
    channel_max(rgb)
    np.testing.assert_array_equal(rgb, before)  # the input is not written
