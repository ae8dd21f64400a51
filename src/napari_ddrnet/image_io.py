"""Read smear images from disk with their pixel size (Qt-free).

TIFF / OME-TIFF (including pyramids and tiled files) go through tifffile; large TIFFs are opened
lazily as dask arrays over tifffile's zarr store, so nothing is read until a tile is needed.
JPEG, PNG and BMP go through Pillow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .image_input import ImageInputError

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = TIFF_SUFFIXES + (".jpg", ".jpeg", ".png", ".bmp")
#: TIFFs with more pixels than this are opened lazily.
LAZY_PIXELS = 4096 * 4096

_UNIT_TO_UM = {"nm": 1e-3, "µm": 1.0, "um": 1.0, "micron": 1.0, "\\u00B5m": 1.0, "mm": 1e3,
               "cm": 1e4, "m": 1e6}


def read_image(path: str | Path):
    """Read an image and its pixel size.

    Parameters
    ----------
    path : str or Path
        TIFF/OME-TIFF, JPEG, PNG or BMP file.

    Returns
    -------
    levels : list of array-like
        Resolution levels, full resolution first (one level unless the TIFF is a pyramid).
        Large TIFF levels are dask arrays; others are numpy arrays.
    pixel_size_um : float or None
        Micrometres per pixel of level 0 when the file says so.

    Raises
    ------
    ImageInputError
        When the file is missing, unreadable or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"File not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageInputError(f"Unsupported file type '{suffix}' ({path.name}); "
                              f"supported: {', '.join(IMAGE_SUFFIXES)}")
    try:
        if suffix in TIFF_SUFFIXES:
            return _read_tiff(path)
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("RGBA") if im.mode in ("P", "LA") else im)
        return [arr], None
    except ImageInputError:
        raise
    except Exception as exc:  # corrupt files raise many different types
        raise ImageInputError(f"Cannot read {path.name}: {exc}") from exc


def _read_tiff(path: Path):
    import tifffile

    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        px = _tiff_pixel_size(tf, series)
        n_levels = len(series.levels)
        shape = series.shape
        big = int(np.prod(shape[:2])) > LAZY_PIXELS if len(shape) >= 2 else False
        if not big and n_levels == 1:
            return [series.asarray()], px
    import dask.array as da
    import zarr

    store = tifffile.imread(path, aszarr=True)
    group = zarr.open(store, mode="r")
    if isinstance(group, zarr.Array):
        return [da.from_zarr(group)], px
    keys = sorted(group.array_keys(), key=lambda k: int(k) if k.isdigit() else k)
    return [da.from_zarr(group[k]) for k in keys], px


def _tiff_pixel_size(tf, series) -> float | None:
    """Pixel size from OME metadata, ImageJ metadata or the resolution tags."""
    if tf.is_ome and tf.ome_metadata:
        import xml.etree.ElementTree as ET

        try:
            root = ET.fromstring(tf.ome_metadata)
            for el in root.iter():
                if el.tag.endswith("Pixels") and el.get("PhysicalSizeX"):
                    unit = el.get("PhysicalSizeXUnit", "µm")
                    return float(el.get("PhysicalSizeX")) * _UNIT_TO_UM.get(unit, 1.0)
        except (ET.ParseError, ValueError):
            pass
    page = series.pages[0] if series.pages else tf.pages[0]
    tags = page.tags
    if "XResolution" not in tags:
        return None
    num, den = tags["XResolution"].value
    if not num or not den:
        return None
    px_per_unit = num / den
    unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2
    ij = tf.imagej_metadata or {}
    ij_unit = str(ij.get("unit", "")).strip()
    if ij_unit:
        scale = _UNIT_TO_UM.get(ij_unit.replace("\\u00B5", "µ"))
        return scale / px_per_unit if scale else None
    unit = int(getattr(unit, "value", unit))
    if unit == 3:  # centimetre
        return 1e4 / px_per_unit
    if unit == 2 and px_per_unit > 1000:  # inch; plain 72/96/300 dpi carries no calibration
        return 25400.0 / px_per_unit
    return None


def list_images(paths) -> list[Path]:
    """Expand files and folders (non-recursive) into the image files to process, in order."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out
