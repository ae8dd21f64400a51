"""napari reader for TIFF / OME-TIFF smears: pyramids as multiscale, pixel size as scale."""

from __future__ import annotations

from pathlib import Path

from .image_io import TIFF_SUFFIXES, read_image


def napari_get_reader(path):
    """Return :func:`read_smear` for a single ``.tif``/``.tiff`` path, else ``None``."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, str | Path) or Path(path).suffix.lower() not in TIFF_SUFFIXES:
        return None
    return read_smear


def read_smear(path) -> list[tuple]:
    """Read a TIFF as an RGB image layer whose ``scale`` is the pixel size in µm (if known)."""
    if isinstance(path, list):
        path = path[0]
    levels, px = read_image(path)
    note = ""
    if px is not None:
        from .scale import PixelSizeError, check_pixel_size

        try:
            check_pixel_size(px, "the file's pixel size")
        except PixelSizeError as exc:  # e.g. a 1200 dpi scanner tag: no calibration at all
            px, note = None, str(exc)
    data = levels if len(levels) > 1 else levels[0]
    rgb = levels[0].ndim == 3 and levels[0].shape[-1] in (3, 4)
    meta = {"name": Path(path).stem, "rgb": rgb, "multiscale": len(levels) > 1,
            "metadata": {"pixel_size_um": px, "source_path": str(path),
                         "pixel_size_note": note}}
    if px:
        meta["scale"] = (px, px)
        meta["units"] = ("µm", "µm")
    return [(data, meta, "image")]
