"""napari sample data: the procedurally generated smear (no dataset image is shipped)."""

from __future__ import annotations

from .synthetic import synthetic_smear

SAMPLE_PIXEL_SIZE_UM = 0.1


def make_sample_smear() -> list[tuple]:
    """A 640x480 synthetic smear at 0.1 µm/px with four white cells of different classes."""
    image, truth = synthetic_smear(pixel_size_um=SAMPLE_PIXEL_SIZE_UM, seed=0)
    return [(image, {"name": "synthetic smear", "rgb": True,
                     "scale": (SAMPLE_PIXEL_SIZE_UM, SAMPLE_PIXEL_SIZE_UM),
                     "metadata": {"pixel_size_um": SAMPLE_PIXEL_SIZE_UM,
                                  "truth": truth.to_dict("list")}}, "image")]
