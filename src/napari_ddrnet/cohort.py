"""Cohorts: many images, and the tiles of large slides, on dask.distributed (Qt-free).

:func:`count_cohort` analyses a list of images serially in this process (``client=None``) or on
a dask cluster, writes each image's rows to part files as soon as it is done, then assembles
the cells and counts CSVs in input order. The rows, their order and the cell ids are the same
with or without a cluster, and the CSVs byte-identical (the same tasks run either way).

Layout of the parts folder (default ``<CELLS.csv>.parts/``, see docs/csv-formats.md)::

    cohort.json           settings that change results; --resume refuses other settings
    <key>.cells.csv       one image's CELLS.csv rows (with header), written atomically
    <key>.counts.csv      its COUNTS.csv rows
    <key>.done            written last: the image is complete

``<key>`` is a hash of the image name as given. A killed run restarted with ``resume=True``
skips every image with a ``.done`` marker, so no row is duplicated or lost.

Work units: a field (an in-memory image) is one task, analysed whole by
:func:`napari_ddrnet.pipeline.analyze`. A lazy slide (a large or pyramidal TIFF) is planned by
one task (:func:`napari_ddrnet.pipeline.plan_slide`), then each of its tiles is a task that
reads only its window from the file (:func:`~napari_ddrnet.pipeline.analyze_tile`); the client
puts the tiles back together (:func:`~napari_ddrnet.pipeline.assemble_tiles`). Workers must see
the image files at the same paths. The classifier is loaded once per worker process.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .classes import DEFAULT_MIN_CONFIDENCE
from .report import COUNT_COLUMNS, csv_tables, write_csv_atomic
from .schema import cells_csv_columns

if TYPE_CHECKING:
    from .scale import PixelSize
    from .shift_score import ShiftVerdict

#: Bumped whenever a part's columns change (2: CELLS.csv gained ``crop_mode``; 3: ``model``).
PARTS_VERSION = 3
#: Files of the parts folder a fresh run may delete (nothing else there is touched).
_PART_NAME = re.compile(r"[0-9a-f]{16}\.(cells\.csv|counts\.csv|done)")
#: How long to wait for a scheduler given by address before giving up, seconds.
CONNECT_TIMEOUT_S = 10.0
#: Dask settings for the workers of the local clusters we start. The statistical profiler (a
#: stack sample every 10 ms, an hour of it kept for the dashboard) makes a worker's memory grow
#: with the run's length, so a bigger slide needed more memory per worker: with it, +0.4 MB per
#: 1 s tile; without it, flat (benchmarks/results/worker_memory.log).
WORKER_DASK_CONFIG = {"distributed.worker.profile.enabled": False}


class CohortError(RuntimeError):
    """A cohort run cannot go on (no cluster, workers dying, output not writable, resume
    mismatch). Parts already written are kept; the message says how to continue."""


@dataclass(frozen=True)
class CountSettings:
    """How each image is analysed (the CLI ``count`` options).

    Attributes
    ----------
    pixel_size_um : float or None
        Micrometres per pixel; ``None``: file metadata, else estimated.
    min_confidence : float
        Cells below this top probability are ``unidentified``.
    weights : str or None
        Classifier weights: a file or a model's name (:func:`napari_ddrnet.weights.weights_path`);
        ``None``: the shipped model.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``mps`` (on each worker).
    batch_size : int
        Crops per forward pass.
    tta : bool
        Average the 8 rotations/flips of each crop.
    tile_size : int or None
        Tile core side for slides (default :data:`napari_ddrnet.pipeline.TILE_SIZE`); also
        forces in-memory images to be tiled, as for :func:`~napari_ddrnet.pipeline.analyze`.
    expect_model : str or None
        ``"name sha256[:12]"`` of the model ``weights`` resolves to where the run was started
        (set by :func:`count_cohort`): a worker whose installation resolves them to another
        model (an older package whose default differs, another file under the same name)
        fails its images with a message instead of counting with it.
    folder_pixel_size : PixelSize or None
        Set by :func:`count_cohort` for its second pass only: the folder's median estimate
        for fields whose own red-cell estimate was declined.
    """

    pixel_size_um: float | None = None
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    weights: str | None = None
    device: str = "auto"
    batch_size: int = 64
    tta: bool = True
    tile_size: int | None = None
    expect_model: str | None = None
    folder_pixel_size: PixelSize | None = None

    def fingerprint(self) -> dict:
        """The settings that change the rows (device and batch size do not), with the model
        the weights resolve to (name and checksum from its card) in place of how they were
        named: parts made by one shipped default never join a run of the next, and one model
        given by its name, its path or as the default is one model."""
        d = asdict(self)
        for k in ("device", "batch_size", "weights", "expect_model", "folder_pixel_size"):
            d.pop(k)
        d["model"] = _model_identity(self.weights)
        return d


def _model_identity(weights: str | None) -> str:
    """``"name sha256[:12]"`` of the weights' card (the shipped default for ``None``); the
    path itself when the card cannot be read (loading the weights reports why)."""
    from .weights import read_card, weights_path

    path = weights_path(weights)
    meta = read_card(path)
    if not meta or "sha256" not in meta:
        return str(path)
    return _identity(meta.get("name") or path.stem, meta["sha256"])


def _identity(name: str, sha256) -> str:
    """How a run names its model (manifest, worker check): the name and the checksum's start."""
    return f"{name} {str(sha256)[:12]}"


@dataclass
class CohortReport:
    """What :func:`count_cohort` did.

    Attributes
    ----------
    images : int
        Images in the input list.
    analysed : int
        Images analysed in this run.
    resumed : int
        Images skipped because their parts were complete (``resume=True``).
    failed : list of tuple
        ``(image, reason)`` for images that could not be read or analysed (no rows).
    cells : int
        Rows of the cells CSV.
    tasks : int
        Tasks run (one per field, one plan plus one per tile for a slide).
    parts_dir : Path
        Folder of the per-image parts.
    shift : napari_ddrnet.shift_score.ShiftVerdict or None
        The label-free "unlike the training data" check of this run's cells.
    group_shift : dict
        The same check per group of images (``count_cohort(groups=...)``): group -> verdict,
        ``None`` where the group has too few cells for one.
    """

    images: int
    analysed: int = 0
    resumed: int = 0
    failed: list = field(default_factory=list)
    cells: int = 0
    tasks: int = 0
    parts_dir: Path | None = None
    #: Whether the run's cells (fields and slides) look unlike the training data
    #: (:mod:`napari_ddrnet.shift_score`); ``None``: no verdict (under 32 cells, weights
    #: without a threshold, or every check failed).
    shift: ShiftVerdict | None = None
    #: The same check per group of images (``count_cohort(groups=...)``).
    group_shift: dict = field(default_factory=dict)
    #: Whether the CSVs were written: not when every image failed (earlier files are kept).
    written: bool = False


# --- worker side -------------------------------------------------------------------------

_CLASSIFIERS: dict = {}
_SLIDES: dict = {}


def worker_classifier(settings: CountSettings):
    """The classifier for ``settings``, loaded once per process and reused by every task.

    In a dask worker torch gets one thread per task thread: the cluster, not torch, spreads
    the work over the cores (two workers with two torch threads each would oversubscribe).
    """
    key = (settings.weights, settings.device, settings.batch_size, settings.tta,
           settings.expect_model)
    clf = _CLASSIFIERS.get(key)
    if clf is None:
        from .classify import Classifier

        if _in_dask_worker():
            import torch

            torch.set_num_threads(1)
            # glibc's allocator is left as it is here: unlike the widget's slide runs, a worker
            # does not creep with it (benchmarks/results/worker_memory.log: flat either way,
            # 12 MB lower without the fixed mmap threshold).
        clf = Classifier(weights=settings.weights, device=settings.device,
                         batch_size=settings.batch_size, tta=settings.tta)
        got = _identity(clf.bundle.name, clf.bundle.meta.get("sha256"))
        if settings.expect_model and got != settings.expect_model:
            raise ValueError(
                f"this worker's napari-ddrnet resolves --weights "
                f"{settings.weights or '(the shipped default)'} to {got}, the run was started "
                f"with {settings.expect_model}: install the same napari-ddrnet version and "
                "model files on every worker (an adapted model: a path every worker reads)")
        _CLASSIFIERS[key] = clf
    return clf


def _in_dask_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
        return True
    except (ImportError, ValueError):
        return False


def _open_slide(path: str):
    """Level 0 of a lazy slide, opened once per process (tiles of one slide share it)."""
    from .image_io import read_image

    stamp = os.stat(path).st_mtime_ns
    hit = _SLIDES.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    levels, _ = read_image(path)
    if len(_SLIDES) >= 4:  # a few open slides at most: their handles hold file buffers
        _SLIDES.pop(next(iter(_SLIDES)))
    _SLIDES[path] = (stamp, levels[0])
    return levels[0]


@dataclass
class _Done:
    """An image's CSV rows (from a task or assembled from tiles)."""

    name: str
    cells: pd.DataFrame
    counts: pd.DataFrame
    pixel_size_source: str
    note: str
    #: The image's share of the run's "unlike the training data" score
    #: (:func:`napari_ddrnet.shift_score.layer_sums`) and its crop count (a slide's
    #: added up over its tiles).
    shift_sum: np.ndarray | None = None
    shift_n: int = 0
    pixel_size_um: float = float("nan")
    #: Analysed whole in memory (a field, not a planned slide): its pixel size may be pooled.
    field: bool = False
    #: Analysed with its folder's median (the second pass): not an estimate of its own.
    pooled: bool = False


@dataclass
class _Tile:
    """One tile's cells and its share of the shift check (the crops stay on the worker)."""

    cells: object  # napari_ddrnet.pipeline.TileCells, without crops
    shift_sum: np.ndarray | None = None
    shift_n: int = 0


@dataclass
class _Failed:
    name: str
    reason: str


@dataclass
class _Planned:
    name: str
    plan: object


def _tables(name: str, result, classes, shift_sum: np.ndarray | None = None,
            shift_n: int | None = None, model: str = "", field: bool = False,
            pooled: bool = False) -> _Done:
    cells_t, counts_t = csv_tables(name, result.cells, result.counts, classes,
                                   result.pixel_size_um, result.pixel_size_source, model)
    if shift_sum is None:
        shift_n = 0
    elif shift_n is None:
        shift_n = len(result.cells)
    return _Done(name, cells_t, counts_t, result.pixel_size_source, result.pixel_size.note,
                 shift_sum, shift_n, float(result.pixel_size_um), field, pooled)


def _shift_sums(clf, crops) -> np.ndarray | None:
    """An image's or tile's :func:`~napari_ddrnet.shift_score.layer_sums`: a few numbers
    travel back instead of the crops. A check that only warns must never cost the rows."""
    from .shift_score import layer_sums

    try:
        return layer_sums(clf.bundle, crops)
    except Exception:
        return None


def image_task(name: str, settings: CountSettings):
    """Task for one input: a field analysed whole, or the plan of a lazy slide's tiles.

    Expected failures (unreadable file, bad image) come back as a value, not an exception, so
    dask does not retry them and the other images go on.
    """
    from .image_input import ImageInputError

    # Lazy slides are dask arrays over the file: read their sample windows in this thread,
    # not by submitting a graph (with the file's handle in it) to the cluster from a task.
    try:
        with _synchronous_dask():
            return _analyse_or_plan(name, settings)
    except (ImageInputError, ValueError, MemoryError, OSError) as exc:
        return _Failed(name, str(exc))
    except Exception as exc:  # one bad image must not stop the cohort
        return _Failed(name, f"unexpected {type(exc).__name__}: {exc}")


def _analyse_or_plan(name: str, settings: CountSettings):
    from .image_io import read_image
    from .pipeline import analyze, plan_slide

    levels, file_px = read_image(name)
    image = levels[0]
    clf = worker_classifier(settings)
    if isinstance(image, np.ndarray):
        result = analyze(image, settings.pixel_size_um, clf, pixel_size_metadata=file_px,
                         min_confidence=settings.min_confidence, return_labels=False,
                         tile_size=settings.tile_size, keep_crops=True,
                         pixel_size=settings.folder_pixel_size)
        return _tables(name, result, clf.classes, _shift_sums(clf, result.crops),
                       model=clf.bundle.name, field=True,
                       pooled=settings.folder_pixel_size is not None)
    return _Planned(name, plan_slide(image, settings.pixel_size_um, crop_fov_um=clf.crop_fov_um,
                                     pixel_size_metadata=file_px, tile_size=settings.tile_size))


def tile_task(name: str, plan, index: int, settings: CountSettings):
    """Task for one tile of a planned slide: its cells (slide coordinates), probabilities and
    share of the shift check (:class:`_Tile`)."""
    from .image_input import ImageInputError
    from .pipeline import analyze_tile

    # The slide is a dask array over the file: read the window in this thread, not by
    # submitting a graph to the cluster from inside a task.
    try:
        clf = worker_classifier(settings)
        with _synchronous_dask():
            tile = analyze_tile(_open_slide(name), plan, index, clf, keep_crops=True)
        sums = _shift_sums(clf, tile.crops)  # a failed check leaves the tile out of the
        n = len(tile.crops) if sums is not None else 0  # verdict, never out of the rows
        tile.crops = None  # only the sums travel back
        return _Tile(tile, sums, n)
    except (ImageInputError, ValueError, MemoryError, OSError) as exc:  # e.g. a corrupt tile
        return _Failed(name, f"tile {index}: {exc}")
    except Exception as exc:  # one bad slide must not stop the cohort
        return _Failed(name, f"tile {index}: unexpected {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _synchronous_dask():
    """Compute dask arrays in the calling thread (inside a task: on purpose, so silently)."""
    import warnings

    import dask

    with dask.config.set(scheduler="synchronous"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Running on a single-machine scheduler")
        yield


# --- client side -------------------------------------------------------------------------

def part_key(name: str) -> str:
    """File stem of an image's parts: a hash of its name as given."""
    return hashlib.sha1(name.encode("utf-8")).hexdigest()[:16]


class _Parts:
    """The parts folder: per-image CSV parts, written atomically, and the final assembly."""

    def __init__(self, folder: Path, settings: CountSettings, resume: bool):
        self.folder = folder
        self.created: list[Path] = []  # folders this run made (none when it resumes)
        manifest = {"version": PARTS_VERSION, "settings": settings.fingerprint()}
        mpath = folder / "cohort.json"
        if resume and mpath.is_file():
            try:
                old = json.loads(mpath.read_text())
            except (OSError, ValueError) as exc:
                raise CohortError(f"cannot read {mpath}: {exc}") from exc
            if old.get("version") != PARTS_VERSION:
                raise CohortError(
                    f"--resume: the parts in {folder} were written by another version of "
                    "napari-ddrnet (other columns); run without --resume to start again")
            was, now = dict(old.get("settings") or {}), manifest["settings"]
            was.pop("weights", None)  # recorded until 2026-12-07; "model" says which weights
            if was != now:
                changed = ", ".join(f"{k} {was.get(k)!r} -> {now.get(k)!r}"
                                    for k in sorted(set(was) | set(now))
                                    if was.get(k) != now.get(k))
                raise CohortError(
                    f"--resume: the parts in {folder} were made with other settings "
                    f"({changed}); run with the same settings, or without --resume to start "
                    "again")
            return
        # The folders this run makes (``--parts-dir a/b`` may make ``a`` too), deepest first
        # (a ``..`` step names no folder of its own).
        self.created = [f for f in (folder, *folder.parents)
                        if f.name != ".." and not f.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        if not resume:  # a fresh run: parts of an earlier run must not leak into this one
            for p in folder.iterdir():
                if _PART_NAME.fullmatch(p.name) or p.name == "cohort.json":
                    p.unlink()
        _write_text_atomic(mpath, [json.dumps(manifest, indent=1)])

    def remove_if_unused(self) -> None:
        """Remove the folder, and the parents this run made for it, when the run wrote nothing
        but its manifest (every image failed): no empty ``.parts`` folder is left behind."""
        created = self.created
        if not created:
            return
        try:
            if [p.name for p in self.folder.iterdir()] == ["cohort.json"]:
                (self.folder / "cohort.json").unlink()
                for f in created:  # and the empty parents it made
                    f.rmdir()
        except OSError:
            pass

    def _path(self, name: str, kind: str) -> Path:
        return self.folder / f"{part_key(name)}.{kind}"

    def is_done(self, name: str) -> bool:
        done = self._path(name, "done")
        if not done.is_file():
            return False
        try:
            ok = json.loads(done.read_text()).get("image") == name
        except (OSError, ValueError):
            return False
        return ok and self._path(name, "cells.csv").is_file() and \
            self._path(name, "counts.csv").is_file()

    def write(self, done: _Done) -> None:
        # The marker goes last: an image killed between the files is simply redone. It also
        # keeps the image's share of the shift check, so a resumed run's verdict is the same.
        write_csv_atomic(done.cells, self._path(done.name, "cells.csv"))
        write_csv_atomic(done.counts, self._path(done.name, "counts.csv"))
        marker = {"image": done.name, "cells": len(done.cells), "field": done.field,
                  "pooled": done.pooled, "pixel_size_um": done.pixel_size_um,
                  "pixel_size_source": done.pixel_size_source, "pixel_size_note": done.note}
        if done.shift_sum is not None:
            marker["shift_n"] = done.shift_n
            marker["shift_sum"] = base64.b64encode(
                np.asarray(done.shift_sum, "<f8").tobytes()).decode("ascii")
        _write_text_atomic(self._path(done.name, "done"), [json.dumps(marker)])

    def shift_of(self, name: str) -> tuple[np.ndarray, int] | None:
        """The shift-check share recorded with a finished image (``None`` if none)."""
        try:
            marker = json.loads(self._path(name, "done").read_text())
            if "shift_sum" not in marker:
                return None
            sums = np.frombuffer(base64.b64decode(marker["shift_sum"]), "<f8").copy()
            return sums, int(marker["shift_n"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def pixel_size_of(self, name: str) -> tuple[PixelSize, bool, bool] | None:
        """A finished image's pixel size, whether it was a field, and whether that size was
        its folder's median (``None`` if not recorded: parts of a version before
        2026-12-07)."""
        from .scale import PixelSize

        try:
            m = json.loads(self._path(name, "done").read_text())
            return (PixelSize(float(m["pixel_size_um"]), m["pixel_size_source"],
                              m.get("pixel_size_note", "")), bool(m["field"]),
                    bool(m["pooled"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def assemble(self, names: Sequence[str], kind: str, header: str, out: Path) -> int:
        """Concatenate the parts of ``names`` (in that order) into ``out``; rows written."""
        rows = 0

        def chunks() -> Iterator[str]:
            nonlocal rows
            yield header
            for name in names:
                text = self._path(name, kind).read_text()
                body = text.split("\n", 1)[1] if "\n" in text else ""
                rows += body.count("\n")  # every row ends in a newline (no newlines in fields)
                yield body

        _write_text_atomic(out, chunks())
        return rows


def _write_text_atomic(path: Path, chunks) -> None:
    """Write the strings of ``chunks`` to ``path`` through a temporary file, then rename."""
    from .atomic import write_text_atomic

    write_text_atomic(path, lambda fh: fh.writelines(chunks))


def _header(columns) -> str:
    return pd.DataFrame(columns=list(columns)).to_csv(index=False)


def local_cluster(workers: int, threads_per_worker: int = 1, **kwargs):
    """A ``distributed.LocalCluster`` of ``workers`` processes set up for cohort runs.

    Its workers get :data:`WORKER_DASK_CONFIG`, so their memory stays bounded by the tile.
    ``kwargs`` go to ``LocalCluster`` (e.g. ``dashboard_address``, ``silence_logs``).
    """
    import copy

    import dask
    from distributed import LocalCluster

    # Each nanny keeps the config it hands to the worker processes it (re)starts. It copies
    # only the top level, so give it its own deep copy: a worker restarted after a crash would
    # otherwise see the global config again, profiler on.
    with dask.config.set(WORKER_DASK_CONFIG):
        config = {"distributed": copy.deepcopy(dask.config.get("distributed"))}
    return LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                        processes=True, config=config, **kwargs)


@contextlib.contextmanager
def cluster(workers: int | None = None, scheduler: str | None = None,
            threads_per_worker: int = 1, timeout: float | None = None):
    """A dask ``Client``: on a new local cluster of ``workers`` processes, or connected to
    the scheduler at ``scheduler``; ``None`` when neither is given (serial run).

    An existing cluster keeps its own worker settings: set ``distributed.worker.profile.enabled:
    false`` there (:data:`WORKER_DASK_CONFIG`) for memory that does not grow with the run.

    Raises
    ------
    CohortError
        When the scheduler cannot be reached or the local cluster cannot start.
    """
    if workers is None and scheduler is None:
        yield None
        return
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    import logging

    try:
        from distributed import Client
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise CohortError(f"dask.distributed is not installed: {exc}") from exc
    if workers is not None and scheduler is not None:
        raise CohortError("give either --workers or --scheduler, not both")
    with contextlib.ExitStack() as stack:
        # distributed logs tracebacks for retried connections and workers closing at shutdown;
        # the caller reports what matters in one line (CohortError), so keep its logs quiet.
        for name in ("distributed", "tornado"):
            log = logging.getLogger(name)
            stack.callback(log.setLevel, log.level)
            log.setLevel(logging.CRITICAL)
        try:
            if scheduler is not None:
                client = Client(scheduler, timeout=timeout)
            else:
                if workers < 1:
                    raise CohortError("--workers must be at least 1")
                lc = local_cluster(workers, threads_per_worker, dashboard_address=":0",
                                   silence_logs=logging.CRITICAL)
                stack.enter_context(lc)
                client = Client(lc, timeout=timeout)
        except CohortError:
            raise
        except (OSError, TimeoutError, ValueError) as exc:
            where = scheduler or f"a local cluster of {workers} workers"
            raise CohortError(f"cannot connect to {where}: {exc}") from exc
        stack.enter_context(client)
        yield client


def count_cohort(files: Sequence[str | os.PathLike], cells_csv: str | os.PathLike,
                 counts_csv: str | os.PathLike, *, client=None,
                 settings: CountSettings | None = None, resume: bool = False,
                 parts_dir: str | os.PathLike | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 warn: Callable[[str], None] | None = None,
                 groups: Mapping[str, str] | None = None) -> CohortReport:
    """Analyse many images and write the cells and counts CSVs, restartably.

    Parameters
    ----------
    files : sequence of path
        Images in output order (as :func:`napari_ddrnet.image_io.list_images` gives them).
    cells_csv, counts_csv : path
        Final CSVs (docs/csv-formats.md), written atomically once every image is done.
    client : distributed.Client, optional
        Cluster to run on; ``None`` runs the same tasks in this process, one after another.
    settings : CountSettings, optional
        Analysis options (default: shipped model, pixel size from the files).
    resume : bool
        Skip images whose parts are complete in ``parts_dir`` (a killed run restarts where it
        stopped); otherwise earlier parts are deleted first.
    parts_dir : path, optional
        Folder of the per-image parts; default ``<cells_csv>.parts`` beside the cells CSV.
    progress : callable, optional
        ``progress(done, total)`` over tasks; ``total`` grows as slides are planned.
    warn : callable, optional
        Called with a message per skipped image, per field given its folder's median pixel
        size (its own red-cell estimate declined; a second pass re-analyses it) and per image
        left at the default pixel size.
    groups : mapping, optional
        Image name -> group (e.g. the folder it was listed from): the "unlike the training
        data" check is then also made per group (:attr:`CohortReport.group_shift`).

    Returns
    -------
    CohortReport

    Raises
    ------
    CohortError
        Output not writable (disk full…), workers dying repeatedly on a task, the cluster lost,
        or ``resume`` with other settings. Completed images' parts are kept.
    """
    settings = settings or CountSettings()
    if settings.expect_model is None:  # what every worker must load: the model resolved here
        settings = replace(settings, expect_model=_model_identity(settings.weights))
    warn = warn or (lambda msg: None)
    names = [str(f) for f in files]
    if len(set(names)) != len(names):
        raise CohortError("an image is listed twice in the inputs")
    cells_csv, counts_csv = Path(cells_csv), Path(counts_csv)
    folder = Path(parts_dir) if parts_dir else cells_csv.with_name(cells_csv.name + ".parts")
    try:
        parts = _Parts(folder, settings, resume)
    except OSError as exc:
        raise CohortError(f"cannot write the parts folder {folder}: {exc}") from exc
    report = CohortReport(images=len(names), parts_dir=folder)
    todo = [n for n in names if not (resume and parts.is_done(n))]
    report.resumed = len(names) - len(todo)
    failed: dict[str, str] = {}
    from .shift_score import ShiftSums  # torch: only where a run is assembled

    shift = ShiftSums()
    by_group: dict[str, ShiftSums] = {}

    def add_shift(name: str, sums, n: int) -> None:
        shift.add(sums, n)
        if groups is not None:
            by_group.setdefault(groups.get(name, name), ShiftSums()).add(sums, n)

    def finish(done: _Done, again: bool = False) -> None:
        try:
            parts.write(done)
        except OSError as exc:
            raise CohortError(f"cannot write the results of {done.name} to {folder}: {exc}; "
                              f"images already written are kept there, and --resume "
                              f"continues from them") from exc
        report.analysed += not again  # a field re-analysed with its folder's pixel size

    def fail(item: _Failed) -> None:
        failed[item.name] = item.reason
        warn(f"napari-ddrnet: skipped {item.name}: {item.reason}")

    if client is not None and _workers_profile(client):
        warn("napari-ddrnet: warning: the cluster's workers run dask's statistical profiler, "
             "so their memory grows with the run; start them with "
             "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False")
    runner = _run_serial if client is None else _run_distributed
    report.tasks = runner(client, todo, settings, finish, fail, progress)
    ok = [n for n in names if n not in failed]
    # A second pass never fails an image: one it cannot redo keeps its first rows.
    report.tasks += _pool_declined(ok, parts, settings, runner, client, finish, progress,
                                   report.tasks, warn)
    report.failed = [(n, failed[n]) for n in names if n in failed]
    if not ok:  # nothing analysed (every image unreadable): keep any earlier CSVs
        parts.remove_if_unused()
        return report
    for name in ok:  # from the parts: resumed and re-analysed images count once each
        add_shift(name, *(parts.shift_of(name) or (None, 0)))
    classes = _classes(settings)
    try:
        report.cells = parts.assemble(ok, "cells.csv", _header(cells_csv_columns(classes)),
                                      cells_csv)
        parts.assemble(ok, "counts.csv", _header(["image"] + COUNT_COLUMNS), counts_csv)
        report.written = True
    except OSError as exc:
        raise CohortError(f"cannot write {cells_csv} / {counts_csv}: {exc}; every image's "
                          f"results are kept in {folder}: --resume writes the CSVs again") from exc
    if shift.sum is not None:  # after the CSVs: a check that only warns comes last
        from .shift_score import verdict_from_sums

        try:
            bundle = worker_classifier(settings).bundle
            report.shift = verdict_from_sums(bundle, shift.sum, shift.n)
            report.group_shift = {g: verdict_from_sums(bundle, t.sum, t.n)
                                  for g, t in by_group.items()}
        except Exception as exc:  # it can only warn: never a traceback instead of the CSVs
            warn(f"napari-ddrnet: warning: the 'unlike the training data' check was skipped: "
                 f"{exc}")
        if shift.left_out:
            warn(f"napari-ddrnet: warning: the 'unlike the training data' check left out "
                 f"{shift.left_out} cells whose results were written with another model or "
                 f"check (e.g. resumed across versions); it covers {shift.n} cells")
    return report


def _pool_declined(names, parts: _Parts, settings: CountSettings, runner, client, finish,
                   progress, tasks_before: int, warn) -> int:
    """Second pass: fields whose own red-cell estimate was declined are analysed again with
    their folder's median estimate (:func:`napari_ddrnet.scale.pool_by_folder`) instead of
    the 0.1 µm/px default; the others that stay at the default are warned about. Returns the
    tasks it ran. Slides keep their own value (a slide's windows rarely all decline)."""
    from .scale import pool_by_folder, pooled_message

    recorded = {n: got for n in names if (got := parts.pixel_size_of(n)) is not None}
    # Fields, and any image's own estimate, join the pool; a median given by an earlier
    # (resumed) run is not an estimate of its own.
    own = {n: px for n, (px, field, was_pooled) in recorded.items()
           if not was_pooled and (field or px.source != "default")}
    pooled = pool_by_folder(own) if settings.pixel_size_um is None else {}
    ran = 0
    groups: dict = {}
    for name, px in pooled.items():
        groups.setdefault(px, []).append(name)

    redone: set[str] = set()

    def finish_again(done: _Done) -> None:
        finish(done, again=True)
        redone.add(done.name)
        warn(f"napari-ddrnet: {done.name}: {pooled_message(pooled[done.name])}")

    def keep_first(item: _Failed) -> None:  # read once already: its first rows stand
        warn(f"napari-ddrnet: {item.name}: not re-analysed with its folder's pixel size: "
             f"{item.reason}")

    for px, batch in groups.items():
        def shifted(done: int, total: int, before=tasks_before + ran) -> None:
            if progress:
                progress(before + done, before + total)

        ran += runner(client, batch, replace(settings, folder_pixel_size=px), finish_again,
                      keep_first, shifted)
    for name, (px, _, _) in recorded.items():  # still at the default after both passes
        if px.source == "default" and name not in redone:
            warn(f"napari-ddrnet: warning: {name}: {px.note}")
    return ran


def _profiler_enabled() -> bool:
    import dask

    return bool(dask.config.get("distributed.worker.profile.enabled", True))


def _workers_profile(client) -> bool:
    """Whether any worker of ``client``'s cluster runs the statistical profiler."""
    try:
        return any(client.run(_profiler_enabled).values())
    except Exception:  # a worker that cannot answer: the run itself will say what is wrong
        return False


def _classes(settings: CountSettings) -> tuple[str, ...]:
    """Model classes (CSV header, tile assembly), from the classifier cached in this process."""
    return tuple(worker_classifier(settings).classes)


def _assembler(settings: CountSettings):
    """Per planned slide: collect its tiles, assemble when all are in."""
    from .pipeline import assemble_tiles

    pending: dict[str, tuple] = {}

    def start(item: _Planned) -> int:
        from .shift_score import ShiftSums

        pending[item.name] = (item.plan, [], ShiftSums())
        return len(item.plan.tiles)

    def add(name: str, tile) -> _Done | _Failed | None:
        """The slide's rows once its last tile is in; a failed tile fails the whole slide
        (no partial slide is ever written); ``None`` while tiles are outstanding."""
        if name not in pending:  # the slide already failed: ignore its other tiles
            return None
        if isinstance(tile, _Failed):
            del pending[name]
            return tile
        if not isinstance(tile, _Tile):  # e.g. a worker of another version on --scheduler
            del pending[name]
            return _Failed(name, f"unexpected tile result {type(tile).__name__} (workers "
                                 f"running another napari-ddrnet version?)")
        plan, got, shift = pending[name]
        got.append(tile.cells)
        shift.add(tile.shift_sum, tile.shift_n)  # the slide's share: its tiles' sums added
        if len(got) < len(plan.tiles):
            return None
        del pending[name]
        clf_classes = _classes(settings)
        result = assemble_tiles(plan, got, clf_classes, settings.min_confidence)
        return _tables(name, result, clf_classes, shift.sum, shift.n,
                       model=worker_classifier(settings).bundle.name)

    return start, add


def _run_serial(client, todo, settings, finish, fail, progress) -> int:
    """Every task in this process, in input order (the tiles of a slide in tile order)."""
    start, add = _assembler(settings)
    total, done = len(todo), 0
    for name in todo:
        item = image_task(name, settings)
        done += 1
        if isinstance(item, _Planned):
            total += start(item)
            for i in range(len(item.plan.tiles)):
                out = add(name, tile_task(name, item.plan, i, settings))
                done += 1
                if progress:
                    progress(done, total)
                if isinstance(out, _Failed):
                    fail(out)
                    total -= len(item.plan.tiles) - i - 1  # its other tiles are not run
                    break
                if out is not None:
                    finish(out)
        elif isinstance(item, _Failed):
            fail(item)
        else:
            finish(item)
        if progress:
            progress(done, total)
    return total


def _run_distributed(client, todo, settings, finish, fail, progress) -> int:
    """Tasks on the cluster; results are written as they arrive, in any order."""
    import asyncio
    import concurrent.futures

    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    # A future cancelled under us (cluster lost): concurrent.futures.CancelledError (newer
    # distributed raises its FutureCancelledError subclass), asyncio's in some old paths.
    cancelled = (asyncio.CancelledError, concurrent.futures.CancelledError)

    start, add = _assembler(settings)
    # Keys name the image (and tile) on the dashboard; pure=False: a rerun recomputes.
    # The pooled second pass has keys of its own: a first-pass result the scheduler has not
    # forgotten yet must not be handed back for it.
    again = "-pooled" if settings.folder_pixel_size is not None else ""
    futures = [client.submit(image_task, n, settings, key=f"image{again}-{part_key(n)}",
                             pure=False) for n in todo]
    meta = {f.key: n for f, n in zip(futures, todo)}
    total, done = len(futures), 0
    queue = as_completed(futures, with_results=False)
    try:
        for fut in queue:
            name = meta.pop(fut.key)
            try:
                item = fut.result()
            except KilledWorker as exc:
                raise CohortError(f"workers died repeatedly while analysing {name} "
                                  f"({exc}); out of memory?") from exc
            except (*cancelled, OSError) as exc:
                raise CohortError(f"lost the cluster while analysing {name}: {exc}") from exc
            done += 1
            if str(fut.key).startswith("tile-"):
                out = add(name, item)
                if isinstance(out, _Failed):
                    fail(out)
                elif out is not None:
                    finish(out)
            elif isinstance(item, _Planned):
                # The plan goes to the cluster once, not pickled into each of its tiles.
                plan_f = client.scatter(item.plan, hash=False)
                n = start(item)
                total += n
                tiles = [client.submit(tile_task, name, plan_f, i, settings, pure=False,
                                       key=f"tile{again}-{part_key(name)}-{i}")
                         for i in range(n)]
                for t in tiles:
                    meta[t.key] = name
                queue.update(tiles)
            elif isinstance(item, _Failed):
                fail(item)
            else:
                finish(item)
            fut.release()
            if progress:
                progress(done, total)
    except BaseException:
        for f in list(queue.futures):
            f.cancel()
        raise
    return total


def wait_for_workers(client, n: int, timeout: float = 60.0) -> None:
    """Block until ``client``'s cluster has ``n`` workers (e.g. after one was killed)."""
    t0 = time.monotonic()
    while len(client.nthreads()) < n:
        if time.monotonic() - t0 > timeout:
            raise CohortError(f"fewer than {n} workers after {timeout:.0f} s")
        time.sleep(0.1)


__all__ = ["CohortError", "CohortReport", "CountSettings", "WORKER_DASK_CONFIG", "cluster",
           "count_cohort", "image_task", "local_cluster", "part_key", "tile_task",
           "wait_for_workers", "worker_classifier"]
