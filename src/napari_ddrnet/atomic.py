"""Atomic file writes: a temporary file in the target's folder, then a rename.

An interrupted write never leaves a partial file, and an existing file is only ever replaced by
a complete one. The result gets the permissions a plain ``open(path, "w")`` would give (0666
less the process umask), not the 0600 of a temporary file, so colleagues sharing a lab folder
can read the CSVs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TextIO


def _umask_mode() -> int:
    mask = os.umask(0)  # the only portable way to read it: set, then restore at once
    os.umask(mask)
    return 0o666 & ~mask


def write_text_atomic(path: str | os.PathLike, write: Callable[[TextIO], None]) -> Path:
    """Create or replace ``path`` with what ``write(fh)`` writes to a text handle.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write; its folder is created if needed.
    write : callable
        Called once with the open text handle (newline translation off, as the csv module
        wants).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    IsADirectoryError
        If ``path`` is an existing folder (checked before anything is written).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            write(fh)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


__all__ = ["write_text_atomic"]
