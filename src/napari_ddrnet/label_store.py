"""A whole slide's label image on disk: a chunked zarr pyramid written tile by tile (Qt-free).

A full-size ``int32`` label image of a 100k x 60k slide is 24 GB. :class:`LabelPyramid` is the
``labels_out`` array :func:`napari_ddrnet.pipeline.iter_analyze` writes each tile into; every
write also updates the downsampled levels (every 2nd, 4th, ... pixel: nearest neighbour, so a
label value is never averaged into another), so the pyramid is complete when the run ends and
napari can show it as a lazy multiscale Labels layer that reads only the chunks on screen.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

#: Chunk side of every level (int32: 4 MB a chunk uncompressed).
CHUNK = 1024
#: Levels are added until the coarsest one's longer side is at most this.
MIN_SIDE = 512


def cache_dir() -> Path:
    """Where label stores of the widget's runs live (``$NAPARI_DDRNET_HOME/cache/labels``, else
    ``$XDG_CACHE_HOME/napari-ddrnet/labels`` or ``~/.cache/napari-ddrnet/labels``)."""
    env = os.environ.get("NAPARI_DDRNET_HOME")
    if env:
        return Path(env) / "cache" / "labels"
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "napari-ddrnet" / "labels"


def level_shapes(shape: tuple[int, int], min_side: int = MIN_SIDE) -> list[tuple[int, int]]:
    """Shapes of the pyramid levels: full size, then halved (rounded up) until the longer side
    is at most ``min_side``."""
    h, w = int(shape[0]), int(shape[1])
    out = [(h, w)]
    while max(out[-1]) > min_side:
        f = 2 ** len(out)
        out.append((-(-h // f), -(-w // f)))
    return out


class LabelPyramid:
    """An ``(H, W)`` ``int32`` label image as a zarr pyramid in a folder.

    Indexing reads and writes full resolution (level 0), as the pipeline expects of
    ``labels_out``; a write of ``[r0:r1, c0:c1]`` also writes the same pixels, subsampled, into
    each coarser level (level ``k`` pixel ``(i, j)`` is level 0 pixel ``(i * 2**k, j * 2**k)``).

    Parameters
    ----------
    shape : tuple of int
        ``(rows, cols)``.
    path : path-like, optional
        Folder of the zarr group (must not exist); default: a new folder in :func:`cache_dir`.
    chunk, min_side : int
        Chunk side and coarsest level size (see :data:`CHUNK`, :data:`MIN_SIDE`).
    """

    dtype = np.dtype(np.int32)
    ndim = 2

    def __init__(self, shape: tuple[int, int], path: str | os.PathLike | None = None, *,
                 chunk: int = CHUNK, min_side: int = MIN_SIDE):
        import zarr

        if path is None:
            root = cache_dir()
            root.mkdir(parents=True, exist_ok=True)
            path = tempfile.mkdtemp(prefix="labels-", suffix=".zarr", dir=root)
            shutil.rmtree(path)  # zarr creates the folder itself
        self.path = Path(path)
        self.shape = (int(shape[0]), int(shape[1]))
        group = zarr.open_group(str(self.path), mode="w-")
        # Empty chunks (no cell) are never written: a sparse slide costs little disk.
        self.levels = [group.create_array(str(k), shape=s, dtype=self.dtype,
                                          chunks=(min(chunk, s[0]), min(chunk, s[1])),
                                          fill_value=0)
                       for k, s in enumerate(level_shapes(self.shape, min_side))]

    def __getitem__(self, key):
        return self.levels[0][key]

    def __setitem__(self, key, value) -> None:
        (r0, r1), (c0, c1) = _bounds(key, self.shape)
        value = np.asarray(value)
        self.levels[0][r0:r1, c0:c1] = value
        for k, level in enumerate(self.levels[1:], 1):
            f = 2**k
            a0, a1, b0, b1 = -(-r0 // f), -(-r1 // f), -(-c0 // f), -(-c1 // f)
            if a1 > a0 and b1 > b0:
                level[a0:a1, b0:b1] = value[a0 * f - r0::f, b0 * f - c0::f]

    def relabel(self, lut: np.ndarray) -> None:
        """Map every label ``v`` to ``lut[v]`` on every level, one chunk at a time."""
        lut = np.asarray(lut, self.dtype)
        for level in self.levels:
            ch, cw = level.chunks
            for r in range(0, level.shape[0], ch):
                for c in range(0, level.shape[1], cw):
                    block = np.asarray(level[r:r + ch, c:c + cw])
                    if block.any():
                        level[r:r + ch, c:c + cw] = lut[block]

    def dask_levels(self) -> list:
        """The levels as lazy dask arrays (one dask chunk per zarr chunk), finest first."""
        import dask.array as da

        return [da.from_zarr(level) for level in self.levels]

    def remove(self) -> None:
        """Delete the store from disk (layers built on it can no longer be drawn)."""
        shutil.rmtree(self.path, ignore_errors=True)


def _bounds(key, shape: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(start, stop)`` per axis of a 2D basic-slice key with unit steps."""
    if not isinstance(key, tuple):
        key = (key,)
    key = key + (slice(None),) * (2 - len(key))
    out = []
    for k, n in zip(key, shape, strict=True):
        if not isinstance(k, slice) or k.step not in (None, 1):
            raise IndexError("LabelPyramid writes take unit-step slices, e.g. [r0:r1, c0:c1]")
        out.append(k.indices(n)[:2])
    return out[0], out[1]


__all__ = ["CHUNK", "LabelPyramid", "cache_dir", "level_shapes"]
