"""Estimate what an analysis will allocate, and refuse one that cannot fit (Qt-free).

The widget asks :func:`check_fits` before starting a run, so a slide too large for the
machine gives a clear message instead of swapping or being killed half-way through.
"""

from __future__ import annotations

import os
import sys

import numpy as np

#: Peak working memory of segmentation per pixel of a tile (measured ~28 B/px with tracemalloc
#: on a 2664 x 2664 synthetic tile; rounded up for scikit-image temporaries).
SEGMENT_BYTES_PER_PX = 40
#: Overlap assumed around a tile before the pixel size is known (pixels, each side).
ASSUMED_OVERLAP = 512
#: Refuse runs needing more than this share of the available memory (headroom for napari).
USABLE_FRACTION = 0.8


#: glibc's ``mallopt`` parameter number of ``M_MMAP_THRESHOLD``, and the value set (1 MiB).
_M_MMAP_THRESHOLD, MMAP_THRESHOLD = -3, 2**20
_threshold_set = False


def return_tile_buffers_to_os() -> bool:
    """Make the C allocator give every large buffer back to the system when it is freed.

    glibc raises its mmap threshold each time a large block is freed, after which tile-sized
    arrays (tens of MB) come from per-thread heaps that keep their pages: over a slide the
    resident memory creeps up tile after tile (benchmarks/slide_viewer.py: a 16384² region
    peaked at 2,162 MB before, 1,547 MB after). A fixed threshold of 1 MiB maps each tile
    buffer separately and unmaps it on free, so memory stays bounded by one tile.
    Process-wide and idempotent; a no-op (``False``) where the C library is not glibc.
    """
    global _threshold_set
    if _threshold_set:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        _threshold_set = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False
    return _threshold_set


def available_bytes() -> int:
    """Memory available to new allocations now (psutil; else ``os.sysconf``; else 4 GiB)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def estimate_bytes(image, *, labels_in_memory: bool, tile_pixels: int | None = None,
                   tile_size: int | None = None, batch_size: int = 64,
                   input_size: int | None = None) -> dict[str, int]:
    """What analysing ``image`` (``(H, W, C)``, numpy or lazy) allocates at its peak, by part.

    Parts: ``image`` (an in-memory image converted to RGB uint8 whole; a lazy one is read one
    tile at a time), ``segmentation`` (one tile's working set, or the whole image when it is
    not tiled), ``labels`` (a full-size int32 label image when kept in memory; one tile's
    read-modify-write region when written to disk) and ``crops`` (one classification batch
    of ``input_size`` crops: the chosen model's, default the shipped model's).
    """
    from .pipeline import TILE_PIXELS, TILE_SIZE
    from .weights import card_input_size

    input_size = input_size or card_input_size(None) or 112  # the default card, if unreadable

    h, w = int(image.shape[0]), int(image.shape[1])
    channels = int(image.shape[2]) if len(image.shape) > 2 else 1
    itemsize = np.dtype(image.dtype).itemsize
    lazy = not isinstance(image, np.ndarray)
    tiled = lazy or h * w > (tile_pixels or TILE_PIXELS)
    side = (tile_size or TILE_SIZE) + 2 * ASSUMED_OVERLAP
    tile = min(h, side) * min(w, side) if tiled else h * w
    parts = {
        # The raw tile as read plus its RGB uint8 conversion.
        "image": (tile * (channels * itemsize + 3)) if lazy else h * w * 3,
        "segmentation": tile * SEGMENT_BYTES_PER_PX,
        "labels": h * w * 4 if labels_in_memory else tile * 4 * 2,
        # float32 network input and the uint8 crops of one batch (x8 views with TTA).
        "crops": batch_size * input_size * input_size * 3 * (4 * 8 + 1),
    }
    return parts


def check_fits(parts: dict[str, int], available: int | None = None) -> str | None:
    """``None`` when ``parts`` (see :func:`estimate_bytes`) fit in the available memory, else
    the message to show the user."""
    need = int(sum(parts.values()))
    avail = available_bytes() if available is None else int(available)
    if need <= USABLE_FRACTION * avail:
        return None
    biggest = max(parts, key=parts.get)
    return (f"Not started: this analysis would need about {_gb(need)} of memory "
            f"({biggest}: {_gb(parts[biggest])}) and {_gb(avail)} is available. "
            "Choose 'Analyse: Shapes region' (draw the counting area in a Shapes layer) or "
            "'current view' to analyse part of the image.")


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**28 else f"{n / 2**20:.0f} MB"


__all__ = ["available_bytes", "check_fits", "estimate_bytes", "return_tile_buffers_to_os"]
