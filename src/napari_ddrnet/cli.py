"""Command line: ``napari-ddrnet count`` for pipelines, ``napari-ddrnet demo`` for a first look,
``napari-ddrnet adapt`` to fit the model to a lab from its reviewed cells.

``count`` contract (see docs/csv-formats.md)::

    napari-ddrnet count IMAGE_OR_DIR... --cells-csv CELLS.csv --counts-csv COUNTS.csv
        [--pixel-size UM] [--device auto|cpu|cuda|mps] [--batch-size N] [--min-confidence P]
        [--single-cell] [--new-lab] [--weights MODEL] [--no-tta]
        [--workers N | --scheduler ADDRESS] [--resume] [--parts-dir DIR] [--tile-size PX]
        [--summary-csv SUMMARY.csv]

A file that cannot be read or analysed is reported on stderr and skipped; the others finish
(when none can be analysed, the CSVs are not written and earlier files are kept).
When the run's cells look unlike the training data (:mod:`napari_ddrnet.shift_score`: fields,
slides and single-cell images) a warning goes to stderr; the CSVs and the exit code do not change.
The exit code is 1 when any file failed, 2 for unusable arguments or weights, an unreachable
scheduler, workers dying repeatedly or an unwritable output (results already written are
kept). CSVs are written atomically, so a crash never leaves a partial file. Each image's rows
go to the parts folder as it finishes (napari_ddrnet.cohort); ``--resume`` skips the images
complete there.

``adapt`` contract (see docs/adaptation.md)::

    napari-ddrnet adapt --cells-csv REVIEWED.csv [MORE.csv ...] [--out MODEL.safetensors]
        [--overwrite] [--single-cell] [--epochs N] [--weights BASE] [--holdout F] [--seed N]
        [--device auto|cpu|cuda|mps] [--with-unreviewed]

``--weights`` takes a ``.safetensors`` file or a model's name (packaged, e.g.
``ddrnet_wbc8_v5``, or one of the user's adapted models).

REVIEWED.csv is a CELLS.csv with a ``reviewed_class`` column; rows where it is empty are not
trained on (with ``--with-unreviewed`` their crops, unlabelled, also re-estimate the BatchNorm
statistics; an unreadable image among them is skipped), and each crop is re-cut
from the row's ``image`` with its geometry and ``pixel_size_um``. Missing images of reviewed
rows, unknown class names, missing columns or too few reviewed cells exit with code 2 and
write nothing, as does an existing ``--out`` without ``--overwrite``. A table saved by a
spreadsheet (semicolons, decimal commas, the Windows code page) reads as the one ``count``
wrote. The adapted model (``.safetensors`` + ``.json`` card) is then used with ``count
--weights MODEL.safetensors`` (or its name).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

from .devices import DEVICES
from .report import COUNT_COLUMNS, counts_table, csv_tables, write_csv_atomic
from .schema import cells_csv_columns


def _attempt(name: str, fn, failed: list[str], write):
    """``fn()``, or ``None`` after reporting why ``name`` is skipped (the batch goes on)."""
    from .image_input import ImageInputError

    try:
        return fn()
    except (ImageInputError, ValueError, MemoryError, OSError) as exc:
        failed.append(name)
        write(f"napari-ddrnet: skipped {name}: {exc}")
    except Exception as exc:  # an unexpected failure on one file must not stop the batch
        failed.append(name)
        write(f"napari-ddrnet: skipped {name}: unexpected {type(exc).__name__}: {exc}")
    return None


def _field_results(files, classifier, args, failed, write):
    """``(name, AnalysisResult)`` per smear field or slide, in input order. A field whose own
    red-cell estimate is declined is analysed again with its folder's median estimate
    (:func:`napari_ddrnet.scale.pool_by_folder`), as :func:`napari_ddrnet.cohort.count_cohort`
    does (slides keep their own value); so every result is held until all are done (this path
    serves ``--new-lab``, which needs them all anyway)."""
    import numpy as np

    from .image_io import read_image
    from .pipeline import analyze
    from .scale import pool_by_folder, pooled_message

    slides = set()  # lazy images: their estimate may join a pool, they keep their own value

    def run(path, pixel_size=None):
        levels, file_px = read_image(path)
        if not isinstance(levels[0], np.ndarray):
            slides.add(str(path))
        return analyze(levels[0], args.pixel_size, classifier, pixel_size_metadata=file_px,
                       min_confidence=args.min_confidence, return_labels=False,
                       keep_crops=args.new_lab, pixel_size=pixel_size)

    results = {}
    for path in files:
        result = _attempt(str(path), lambda p=path: run(p), failed, write)
        if result is not None:
            results[str(path)] = result
    pooled = pool_by_folder({n: r.pixel_size for n, r in results.items()
                             if n not in slides or r.pixel_size.source != "default"})
    for name, px in pooled.items():
        try:
            results[name] = run(name, px)
        except Exception:  # read once already: keep that result (and its default warning)
            continue
        write(f"napari-ddrnet: {name}: {pooled_message(px)}")
    for path in files:
        if str(path) in results:
            yield str(path), results[str(path)]


def _adapted_to_lab(results: list, classifier, args, write) -> tuple[list, str]:
    """The results re-classified by a classifier adapted to all their cells (``--new-lab``),
    and the name of the model that made their calls (CELLS.csv's ``model``); unchanged, with
    a warning, when there are too few cells to adapt on."""
    import numpy as np

    from .classify import MIN_LAB_CROPS
    from .pipeline import reclassify

    crops = [r.crops for _, r in results if r.crops is not None and len(r.crops)]
    crops = np.concatenate(crops) if crops else np.zeros((0, 1, 1, 3), np.uint8)
    if len(crops) < MIN_LAB_CROPS:
        write(f"napari-ddrnet: warning: --new-lab not applied: it needs at least "
              f"{MIN_LAB_CROPS} cells of the lab, these images have {len(crops)}")
        return results, classifier.bundle.name
    adapted = classifier.adapted_to_lab(crops)
    write(f"napari-ddrnet: adapted to this lab's colours and statistics from {len(crops)} "
          "cells (--new-lab)")
    return ([(name, reclassify(r, adapted, args.min_confidence)) for name, r in results],
            adapted.bundle.name)


_ADVICE = (" Review a few cells per class and adapt the model to your lab (the widget's "
           "'Adapt to my lab...', or `napari-ddrnet adapt --help`); --new-lab (no labels) "
           "helps less, needs a run of mixed classes and can lower some classes.")


def _warn_if_unlike_training(classifier, sample, args, write, verdict=None) -> bool:
    """Say on stderr when the run's cells look unlike the training data (label-free; see
    :mod:`napari_ddrnet.shift_score`); a note for weights without a threshold, silent for
    small runs.
    ``verdict``, when given, is the run's verdict from all its crops (with ``--summary-csv``)
    instead of the sample's. Returns whether it warned."""
    from .shift_score import shift_verdict

    if _unchecked(classifier.bundle, write):
        return False
    try:
        if verdict is None:
            verdict = shift_verdict(classifier.bundle, sample.crops, n_cells=sample.n_seen)
    except Exception as exc:  # comes after the CSVs: it can only warn, never crash
        write(f"napari-ddrnet: warning: the 'unlike the training data' check was skipped: {exc}")
        return False
    if verdict is None or not verdict.warns:
        return False
    advice = (" --new-lab was applied; review some cells to check its classes."
              if args.new_lab else _ADVICE)
    write(f"napari-ddrnet: warning: {verdict.summary()}{advice}")
    return True


def _unchecked(bundle, write) -> bool:
    """Say so (and return True) when the weights carry no threshold for the 'unlike the
    training data' check: an empty ``unlike_training`` column must not read as "fine"."""
    if bundle.meta.get("shift_warning"):
        return False
    write(f"napari-ddrnet: note: the model {bundle.name} carries no threshold for the 'unlike "
          "the training data' check (e.g. a model adapted to one lab), so this run was not "
          "checked")
    return True


def _checks_inputs(args, owner: dict[str, str]) -> bool:
    """Whether each input gets its own 'unlike the training data' check: with several inputs
    (one shifted patient can hide in a pooled run), or for ``--summary-csv``'s columns."""
    return bool(args.summary_csv) or len(set(owner.values())) > 1


def _warn_per_input(verdicts: dict, run_warned: bool, args, write) -> None:
    """With several inputs: name the inputs (patients, smears) whose cells look unlike the
    training data, since one shifted input can hide in a pooled run."""
    if len(verdicts) < 2:
        return
    shifted = [(inp, v) for inp, v in verdicts.items() if v is not None and v.warns]
    if not shifted:
        return
    names = "; ".join(f"{inp} (score {v.score:.3f} > {v.threshold:.3f}, {v.n_cells} cells)"
                      for inp, v in shifted)
    advice = "" if run_warned or args.new_lab else _ADVICE
    column = " (summary column unlike_training)" if args.summary_csv else ""
    write(f"napari-ddrnet: warning: {len(shifted)} of {len(verdicts)} inputs look unlike the "
          f"images the classifier learned from{column}: {names}.{advice}")


class _InputShift:
    """Per input, the added :func:`~napari_ddrnet.shift_score.layer_sums` of its crops,
    fed image by image in input order (crops are batched up to 64 within an input). A check
    that fails stops (:attr:`error`) and is reported after the CSVs: it never costs them."""

    def __init__(self, bundle, owner: dict[str, str], single_cell: bool) -> None:
        from .shift_score import SHIFT_MIN_CROPS, ShiftSums

        self.bundle, self.owner = bundle, owner
        self.sums: dict[str, ShiftSums] = {}
        self.error: Exception | None = None
        self.partial = False
        self._new = ShiftSums
        self._group: str | None = None
        self._buffer: list = []
        # One cell per single-cell image: an input of fewer images can never get a verdict.
        files = Counter(owner.values())
        self._skip = ({inp for inp, k in files.items() if k < SHIFT_MIN_CROPS}
                      if single_cell else set())

    def add(self, name: str, crops) -> None:
        if crops is None or not len(crops) or self.error is not None:
            return
        group = self.owner.get(name, name)
        if group in self._skip:
            self.partial = True  # the run's verdict then comes from its sample instead
            return
        if group != self._group:
            self.flush()
            self._group = group
        self._buffer.append(crops)
        if sum(len(c) for c in self._buffer) >= 64:
            self.flush()

    def flush(self) -> None:
        import numpy as np

        from .shift_score import layer_sums

        if self._buffer and self._group is not None and self.error is None:
            crops = np.concatenate(self._buffer)
            try:
                sums = layer_sums(self.bundle, crops)
            except Exception as exc:  # e.g. weights whose card the check cannot read
                self.error = exc
            else:
                self.sums.setdefault(self._group, self._new()).add(sums, len(crops))
        self._buffer = []

    def verdicts(self) -> tuple[dict, object]:
        """Per-input verdicts and the run's, from all crops (``({}, None)`` after a failure)."""
        from .shift_score import verdict_from_sums

        self.flush()
        if self.error is not None:
            return {}, None
        total = self._new()
        for t in self.sums.values():
            total.add(t.sum, t.n)
        try:
            return ({g: verdict_from_sums(self.bundle, t.sum, t.n)
                     for g, t in self.sums.items()},
                    None if self.partial else verdict_from_sums(self.bundle, total.sum,
                                                                total.n))
        except Exception as exc:
            self.error = exc
            return {}, None


def _single_cell_results(files, classifier, args, failed, write):
    """``(name, AnalysisResult)`` per single-cell image, classified in batches. Without
    ``--pixel-size``, the images of each folder (given as a folder or as files, e.g. a shell
    glob) are measured first and those whose own pixel size was only estimated (or the
    default) share the folder's median estimate
    (:func:`napari_ddrnet.scale.pooled_pixel_size`)."""
    from .image_io import read_image
    from .scale import pool_by_folder
    from .single_cell import classify_single_cells, image_pixel_size, prepare_single_cell

    names: dict[int, str] = {}

    def own_sizes(paths) -> dict:
        out = {}
        for path in paths:
            def measure(p=path):
                levels, file_px = read_image(p)
                return image_pixel_size(levels[0], args.pixel_size, file_px)
            px = _attempt(str(path), measure, failed, write)
            if px is not None:
                out[path] = px
        return out

    def prepared():
        sizes = own_sizes(files) if args.pixel_size is None else None
        # Exports of one analyser (one folder) share one scale; each own estimate is rough.
        pooled = pool_by_folder({str(p): px for p, px in sizes.items()},
                                replace=("estimated", "default")) if sizes else {}
        for path in files:  # in input order, as every CSV lists its rows
            if sizes is not None and path not in sizes:
                continue  # unreadable: reported once, when measured
            px = None
            if sizes is not None:
                px = pooled.get(str(path), sizes[path])

            def run(p=path, px=px):
                levels, file_px = read_image(p)
                return prepare_single_cell(levels[0], classifier.input_size,
                                           args.pixel_size, file_px, pixel_size=px)
            cell = _attempt(str(path), run, failed, write)
            if cell is not None:
                names[id(cell)] = str(path)
                yield cell

    for cell, result in classify_single_cells(prepared(), classifier, args.min_confidence):
        yield names.pop(id(cell)), result


def _bar_off(off: bool) -> bool | None:
    """tqdm's ``disable``: ``None`` lets it draw only on a terminal, so a log file gets no
    thousands of carriage-return updates."""
    return True if off else None


def _nothing_written(files, args: argparse.Namespace) -> int:
    """Exit 1 when no input could be analysed; the CSVs were not touched."""
    print(f"napari-ddrnet: error: none of the {len(files)} images could be analysed; "
          f"{args.cells_csv} and {args.counts_csv} were not written (files already there are "
          "left as they were)", file=sys.stderr)
    return 1


def list_inputs(inputs) -> list[tuple[str, list[Path]]]:
    """Each input as given, with the image files it lists (a folder: its images; a file:
    itself), in order; read once for the run's file list, its empty folders and
    :func:`_write_summary`'s owners."""
    from .image_io import list_images

    return [(str(inp), list_images([inp])) for inp in inputs]


def _write_summary(args: argparse.Namespace, owner: dict[str, str],
                   verdicts: dict | None = None) -> str:
    """Write ``--summary-csv``: one differential per input as given (a folder of one smear's
    fields or one patient's single-cell exports pools all its cells), read back from the
    CSVs just written so that every count path gives the same table. ``owner`` maps each
    image to its input (from :func:`list_inputs`, when the run started); ``verdicts`` holds each
    input's "unlike the training data" check (``shift_score``, ``unlike_training``; empty
    under 32 cells or for weights without a threshold). Returns the text the final message
    adds ("" without ``--summary-csv``)."""
    if args.summary_csv is None:
        return ""
    verdicts = verdicts or {}
    cells = pd.read_csv(args.cells_csv, usecols=["image", "class"], dtype=str,
                        keep_default_na=False)
    analysed = pd.read_csv(args.counts_csv, usecols=["image"], dtype=str,
                           keep_default_na=False)["image"].unique()
    images: dict[str, list[str]] = {str(i): [] for i in args.inputs}
    for name in analysed:
        images.setdefault(owner.get(name, name), []).append(name)
    listed = Counter(owner.values())
    parts = []
    for inp, names in images.items():
        table = counts_table(cells.loc[cells["image"].isin(names), "class"])
        table.insert(0, "images_failed", max(listed.get(inp, 0) - len(names), 0))
        table.insert(0, "images", len(names))
        table.insert(0, "input", inp)
        verdict = verdicts.get(inp)
        table["shift_score"] = round(verdict.score, 4) if verdict is not None else None
        table["unlike_training"] = verdict.warns if verdict is not None else None
        parts.append(table)
    write_csv_atomic(pd.concat(parts, ignore_index=True), args.summary_csv)
    return f" and {args.summary_csv}"


def _inputs_problem(files, args: argparse.Namespace) -> str | None:
    """Why the inputs cannot be counted as given (checked before any image is analysed), or
    ``None``: a path that does not exist is a typo (not checked with ``--scheduler`` or
    ``--resume``), an image listed twice would count its cells twice, and an output CSV that
    is one of the input images would replace the image."""
    # A mistyped path stops the run before it starts, as an empty folder does. Not with
    # --scheduler (the workers may see paths this machine does not) nor --resume (finished
    # images are not read again, and may have been moved away since).
    missing = ([] if args.scheduler or args.resume
               else [str(f) for f in files if not Path(f).exists()])
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        glob = (" (a shell pattern that matched nothing?)"
                if any(c in missing[0] for c in "*?[") else "")
        return f"no such file or folder: {missing[0]}{glob}{more}"
    seen: dict[Path, Path] = {}
    for f in files:
        real = Path(f).resolve()  # also the same file under two spellings or through a link
        if real in seen:
            same = "" if Path(seen[real]) == Path(f) else f" (also as {seen[real]})"
            return f"{f} is listed twice in the inputs{same}: its cells would be counted twice"
        seen[real] = Path(f)
    images = {p for f in files for p in (Path(f).absolute(), Path(f).resolve())}
    for flag, path in _outputs(args):
        if path.absolute() in images or path.resolve() in images:
            return f"{flag} {path} is one of the input images: writing it would replace the image"
    return None


def _outputs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """``(flag, path)`` of every CSV a ``count`` run writes."""
    outs = [("--cells-csv", Path(args.cells_csv)), ("--counts-csv", Path(args.counts_csv))]
    if args.summary_csv is not None:
        outs.append(("--summary-csv", Path(args.summary_csv)))
    return outs


def _count(args: argparse.Namespace) -> int:
    whole_run = args.single_cell or args.new_lab
    if whole_run and (args.workers or args.scheduler or args.resume):
        mode = "--single-cell" if args.single_cell else "--new-lab"
        print(f"napari-ddrnet: error: {mode} works on the whole run in one process: it cannot "
              "be combined with --workers, --scheduler or --resume", file=sys.stderr)
        return 2
    listed = list_inputs(args.inputs)
    files = [f for _, fs in listed for f in fs]
    if not files:
        print("napari-ddrnet: error: no image files found in the inputs", file=sys.stderr)
        return 2
    for inp, fs in listed:  # a patient's folder left empty must not pass unnoticed
        if not fs and Path(inp).is_dir():
            print(f"napari-ddrnet: warning: {inp} holds no image files; it is left out",
                  file=sys.stderr)
    problem = _inputs_problem(files, args)
    if problem:
        print(f"napari-ddrnet: error: {problem}", file=sys.stderr)
        return 2
    owner = {str(f): inp for inp, fs in listed for f in fs}  # image -> its input, as given
    if not whole_run:
        return _count_cohort(files, args, owner)
    return _count_whole_run(files, args, owner)


def _count_cohort(files, args: argparse.Namespace, owner: dict[str, str]) -> int:
    """Fields and slides, serially or on dask.distributed, restartable (napari_ddrnet.cohort)."""
    from tqdm import tqdm

    from .cohort import CohortError, CountSettings, cluster, count_cohort, worker_classifier
    from .weights import WeightsError

    settings = CountSettings(pixel_size_um=args.pixel_size, min_confidence=args.min_confidence,
                             weights=None if args.weights is None else str(args.weights),
                             device=args.device, batch_size=args.batch_size,
                             tta=not args.no_tta, tile_size=args.tile_size)
    try:
        bundle = worker_classifier(settings).bundle  # bad weights fail here, before any cluster
    except (WeightsError, ValueError) as exc:
        print(f"napari-ddrnet: error: {exc}", file=sys.stderr)
        return 2
    bars = []  # made once connected: no bar is drawn for a scheduler that cannot be reached

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="tasks", unit="task", disable=_bar_off(
                args.quiet or (len(files) < 2 and not (args.workers or args.scheduler)))))
        bars[0].total = total
        bars[0].n = done
        bars[0].refresh()

    def write(msg: str) -> None:
        tqdm.write(msg, file=sys.stderr)

    def close_bar() -> None:
        for bar in bars:
            bar.close()

    try:
        with cluster(args.workers, args.scheduler) as client:
            report = count_cohort(files, args.cells_csv, args.counts_csv, client=client,
                                  settings=settings, resume=args.resume,
                                  parts_dir=args.parts_dir, progress=progress, warn=write,
                                  groups=owner if _checks_inputs(args, owner) else None)
    except CohortError as exc:
        close_bar()
        print(f"napari-ddrnet: error: {exc}", file=sys.stderr)
        return 2
    close_bar()
    if not report.written:
        return _nothing_written(files, args)
    warned = report.shift is not None and report.shift.warns
    if not _unchecked(bundle, write) and warned:
        write(f"napari-ddrnet: warning: {report.shift.summary()}{_ADVICE}")
    _warn_per_input(report.group_shift, warned, args, write)
    summary = _write_summary(args, owner, report.group_shift)
    if not args.quiet:
        resumed = f" ({report.resumed} from earlier parts)" if report.resumed else ""
        print(f"{len(files) - len(report.failed)}/{len(files)} images analysed{resumed}, "
              f"{report.cells} cells; wrote {args.cells_csv} and {args.counts_csv}{summary}",
              file=sys.stderr)
    return 1 if report.failed else 0


def _count_whole_run(files, args: argparse.Namespace, owner: dict[str, str]) -> int:
    """--single-cell (crops batched across images) and --new-lab (adapts on all cells)."""
    from tqdm import tqdm

    from .classify import Classifier
    from .shift_score import CropSample
    from .weights import WeightsError

    try:
        classifier = Classifier(weights=args.weights, device=args.device,
                                batch_size=args.batch_size, tta=not args.no_tta)
    except (WeightsError, ValueError) as exc:
        print(f"napari-ddrnet: error: {exc}", file=sys.stderr)
        return 2
    bar = tqdm(total=len(files), desc="images", unit="image",
               disable=_bar_off(len(files) < 2 or args.quiet))

    def write(msg: str) -> None:
        tqdm.write(msg, file=sys.stderr)

    cell_tables, count_tables, failed = [], [], []
    if args.single_cell:
        results = _single_cell_results(files, classifier, args, failed, write)
    else:
        results = _field_results(files, classifier, args, failed, write)
    model_name = classifier.bundle.name
    if args.new_lab:  # needs every cell first: analyse all, adapt, then re-classify
        results, model_name = _adapted_to_lab(list(results), classifier, args, write)
    sample = CropSample()  # the run's cells (re-classified ones keep their raw crops)
    per_input = (_InputShift(classifier.bundle, owner, args.single_cell)
                 if _checks_inputs(args, owner) else None)
    for name, result in results:
        sample.add(result.crops)
        if per_input is not None:
            per_input.add(name, result.crops)
        cells_t, counts_t = csv_tables(name, result.cells, result.counts, classifier.classes,
                                       result.pixel_size_um, result.pixel_size_source,
                                       model_name)
        if result.pixel_size_source == "default" and not args.single_cell:
            # Field crops are cut at the model's field of view in µm: a guessed scale can
            # mis-size every crop, so say so rather than bury it in the CSV.
            write(f"napari-ddrnet: warning: {name}: {result.pixel_size.note}")
        cell_tables.append(cells_t)
        count_tables.append(counts_t)
        bar.n = len(cell_tables) + len(failed)
        bar.refresh()
    bar.close()
    if failed and not count_tables:  # a typo in every path must not wipe earlier results
        return _nothing_written(files, args)
    cells_all = (pd.concat(cell_tables, ignore_index=True) if cell_tables else
                 pd.DataFrame(columns=cells_csv_columns(classifier.classes)))
    counts_all = (pd.concat(count_tables, ignore_index=True) if count_tables else
                  pd.DataFrame(columns=["image"] + COUNT_COLUMNS))
    write_csv_atomic(cells_all, args.cells_csv)
    write_csv_atomic(counts_all, args.counts_csv)
    verdicts, run_verdict = per_input.verdicts() if per_input is not None else ({}, None)
    summary = _write_summary(args, owner, verdicts)
    if per_input is not None and per_input.error is not None:
        write(f"napari-ddrnet: warning: the per-input 'unlike the training data' check was "
              f"skipped: {per_input.error}")
    # With the summary, the run is judged on all its crops, as each input is (same numbers).
    warned = _warn_if_unlike_training(classifier, sample, args, write, run_verdict)
    _warn_per_input(verdicts, warned, args, write)
    ok = len(files) - len(failed)
    if not args.quiet:
        print(f"{ok}/{len(files)} images analysed, {len(cells_all)} cells; "
              f"wrote {args.cells_csv} and {args.counts_csv}{summary}", file=sys.stderr)
    return 1 if failed else 0


def _demo(args: argparse.Namespace) -> int:
    from ._sample_data import SAMPLE_PIXEL_SIZE_UM
    from .pipeline import analyze
    from .synthetic import synthetic_smear

    px = SAMPLE_PIXEL_SIZE_UM
    image, _ = synthetic_smear(pixel_size_um=px, seed=args.seed)
    if args.viewer:
        import napari

        from ._widget import DifferentialWidget

        viewer = napari.Viewer(title="napari-ddrnet demo")
        viewer.add_image(image, name="synthetic smear", rgb=True, scale=(px, px),
                         metadata={"pixel_size_um": px})
        widget = DifferentialWidget(viewer)
        viewer.window.add_dock_widget(widget, name="WBC differential (DDRNet)")
        widget.run()
        napari.run()
        return 0
    from .classify import Classifier

    classifier = Classifier(device=args.device)
    result = analyze(image, px, classifier)
    out = Path(args.out)
    cells_t, counts_t = csv_tables("synthetic-smear", result.cells, result.counts,
                                   result.classes, result.pixel_size_um,
                                   result.pixel_size_source, classifier.bundle.name)
    write_csv_atomic(cells_t, out / "cells.csv")
    write_csv_atomic(counts_t, out / "counts.csv")
    print(f"Synthetic smear: {len(result.cells)} white cells found "
          f"(pixel size {result.pixel_size_um:.3f} µm)")
    print(result.cells[["cell_id", "centroid_row", "centroid_col", "class", "confidence"]]
          .round(3).to_string(index=False))
    print()
    print(result.counts.round(1).to_string(index=False))
    print(f"\nwrote {out / 'cells.csv'} and {out / 'counts.csv'}")
    return 0


def _read_reviewed(paths: list[Path]) -> pd.DataFrame:
    """Concatenate reviewed CSVs; a relative ``image`` path that does not exist from the
    working directory is looked up beside its CSV (a results folder moved as a whole)."""
    from .adapt import AdaptError

    parts = []
    for csv in paths:
        try:
            fmt = _csv_format(csv)
            df = pd.read_csv(csv, dtype={"image": str, "reviewed_class": str}, **fmt)
            if "image" in df:  # a file named e.g. "NA" or "null" is a name, not a missing value
                df["image"] = pd.read_csv(csv, usecols=["image"], dtype=str,
                                          keep_default_na=False, **fmt)["image"]
            if fmt["sep"] == ";":
                df = _decimal_commas(df)
        except (OSError, ValueError) as exc:
            raise AdaptError(f"cannot read {csv}: {exc}") from exc
        if "image" in df:
            df["image"] = [_resolve_image(name, csv) for name in df["image"]]
        parts.append(df)
    return pd.concat(parts, ignore_index=True)


def _csv_format(csv: Path) -> dict:
    """``read_csv``'s ``sep`` and ``encoding`` for a reviewed table, which a spreadsheet may
    have saved. Every table we write uses commas and UTF-8; a spreadsheet in a European locale
    puts semicolons between fields, and Excel's plain "CSV" is in the Windows code page
    (cp1252), not UTF-8. The header's more frequent separator wins."""
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            with open(csv, encoding=encoding) as fh:
                fh.read()  # the whole file: a non-UTF-8 byte may sit in any row
                fh.seek(0)
                header = fh.readline()
        except UnicodeDecodeError:
            continue
        return {"sep": ";" if header.count(";") > header.count(",") else ",",
                "encoding": encoding}
    return {"sep": ",", "encoding": "utf-8-sig"}  # read_csv then says what is wrong


def _decimal_commas(df: pd.DataFrame) -> pd.DataFrame:
    """Text columns whose every value is a number written with a decimal comma (``0,125``),
    as numbers; a semicolon-separated table may use decimal commas or points."""
    for c in df.columns:
        if (c in ("image", "reviewed_class")  # names, even when they look like numbers
                or pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c])):
            continue
        text = df[c].dropna().astype(str).str.strip()
        if not len(text) or not text.str.fullmatch(r"[-+]?\d+(,\d*)?([eE][-+]?\d+)?").all():
            continue
        df[c] = pd.to_numeric(df[c].astype(str).str.replace(",", ".", regex=False),
                              errors="coerce").where(df[c].notna())
    return df


def _resolve_image(name: str, csv: Path) -> str:
    path = Path(name)
    if not path.is_absolute() and not path.exists() and (csv.parent / path).exists():
        return str(csv.parent / path)
    return name


def _adapt(args: argparse.Namespace) -> int:
    from .adapt import AdaptError, adapt_from_cells
    from .weights import WeightsError

    def error(msg) -> int:
        print(f"napari-ddrnet: error: {msg}", file=sys.stderr)
        return 2

    missing = [str(p) for p in args.cells_csv if not p.is_file()]
    if missing:
        return error(f"cells CSV not found: {', '.join(missing)}")
    if args.epochs is not None and args.epochs < 1:
        return error("--epochs must be at least 1")
    if not 0.0 <= args.holdout < 1.0:
        return error("--holdout must be in [0, 1)")
    if args.out is not None and args.out.suffix != ".safetensors":
        return error("--out must end in .safetensors (its .json card is written beside it)")
    if args.out is not None and not args.overwrite and args.out.exists():
        return error(f"--out {args.out} exists: a model made earlier would be lost; give "
                     "another name, or add --overwrite to replace it")
    try:
        cells = _read_reviewed(args.cells_csv)
    except AdaptError as exc:
        return error(exc)

    from tqdm import tqdm

    bar = tqdm(desc="adapting", unit="step", disable=_bar_off(args.quiet))
    tenths: set[int] = set()

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
        # Off a terminal (a log, nohup) the bar is silent: a line every tenth of the steps
        # says the minutes-long fine-tuning is alive.
        tenth = 10 * done // max(total, 1)
        if bar.disable and not args.quiet and tenth not in tenths:
            tenths.add(tenth)
            print(f"adapting: {done}/{total} steps", file=sys.stderr, flush=True)

    try:
        report = adapt_from_cells(cells, args.out, base_weights=args.weights,
                                  single_cell=True if args.single_cell else None,
                                  epochs=args.epochs,
                                  holdout=args.holdout, seed=args.seed, progress=progress,
                                  source_files=[str(p) for p in args.cells_csv],
                                  unreviewed=args.with_unreviewed, device=args.device)
    except (AdaptError, WeightsError) as exc:
        bar.close()
        return error(exc)
    bar.close()
    if not args.quiet:
        def pct(v):
            return "n/a" if v is None else f"{100 * v:.1f} %"
        print(f"adapted on {report.n_train} cells ({report.n_unlabelled} more unlabelled) in "
              f"{report.seconds:.1f} s; held-out "
              f"{report.n_holdout} cells: {pct(report.before_accuracy)} before, "
              f"{pct(report.after_accuracy)} after", file=sys.stderr)
        for c, v in report.per_class.items():
            print(f"  {c:14s} train {v['train']:4d}  held out {v['holdout']:4d}  "
                  f"{pct(v['before'])} -> {pct(v['after'])}", file=sys.stderr)
        if 0 < report.n_holdout < 50:  # 2 cells per class can only read 0, 50 or 100 %
            print(f"  ({report.n_holdout} held-out cells: a rough check, not a measurement; "
                  "review more cells, or give a cell_group column so near-copies of one "
                  "cell stay on one side)", file=sys.stderr)
        print(f"wrote {report.path} (use: napari-ddrnet count --weights {report.path} ...)",
              file=sys.stderr)
    if (report.after_accuracy is not None
            and report.after_accuracy < report.before_accuracy):
        # Adaptation can hurt where the base model already fits the lab (docs/adaptation.md).
        print("napari-ddrnet: warning: the adapted model is less accurate than the base model "
              "on the held-out cells; keep using the base model, or review more cells",
              file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="napari-ddrnet",
                                 description="White-blood-cell differential with DDRNet.")
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("count", help="analyse images and write per-cell and per-class CSVs")
    c.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    c.add_argument("--cells-csv", required=True, type=Path,
                   help="one row per white cell: position, class, probabilities")
    c.add_argument("--counts-csv", required=True, type=Path,
                   help="the differential: count and percentage per class, per image")
    c.add_argument("--summary-csv", type=Path, default=None, metavar="SUMMARY.csv",
                   help="also one pooled differential per input as given: a folder (one "
                        "smear's fields, one patient's single-cell exports) or a file")
    c.add_argument("--pixel-size", type=float, default=None, metavar="UM",
                   help="micrometres per pixel (default: file metadata, else estimated)")
    c.add_argument("--device", default="auto", choices=DEVICES)
    c.add_argument("--batch-size", type=int, default=64, metavar="N",
                   help="crops per forward pass (default 64: as fast as 256 on a CPU, less memory)")
    c.add_argument("--min-confidence", type=float, default=0.5, metavar="P",
                   help="cells below this top probability are 'unidentified' (default 0.5)")
    c.add_argument("--no-tta", action="store_true",
                   help="classify each crop once instead of averaging its 8 rotations/flips")
    c.add_argument("--single-cell", action="store_true",
                   help="each image is one centred cell (CellaVision-style export): one row "
                        "per image, classified whole")
    c.add_argument("--new-lab", action="store_true",
                   help="images from a lab/stain/camera the model never saw: adapt the "
                        "classifier's colour and BatchNorm statistics to all cells of this run "
                        "(no labels; needs >= 32 cells; hurts on images like the training data)")
    c.add_argument("--weights", default=None, metavar="MODEL",
                   help="classifier: a .safetensors file (its .json card beside it) or a "
                        "model's name, packaged (e.g. ddrnet_wbc8_v5) or adapted by you; "
                        "default: the shipped model")
    c.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run on a local dask cluster of N worker processes (one thread each)")
    c.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on an existing dask cluster, e.g. tcp://head:8786 (the workers "
                        "must see the images at the same paths)")
    c.add_argument("--resume", action="store_true",
                   help="skip images already complete in the parts folder (a killed run "
                        "restarts where it stopped)")
    c.add_argument("--parts-dir", type=Path, default=None, metavar="DIR",
                   help="per-image results, written as each image finishes (default: "
                        "CELLS.csv.parts beside the cells CSV)")
    c.add_argument("--tile-size", type=int, default=None, metavar="PX",
                   help="tile side for large slides (default 2048; each tile is one task)")
    c.add_argument("--quiet", action="store_true")
    a = sub.add_parser(
        "adapt", help="fine-tune the classifier on reviewed cells of your lab",
        description="Fit the classifier to your lab from cells you reviewed. 1) `napari-ddrnet "
                    "count` your images (or analyse them in napari); 2) review cells: fill the "
                    "reviewed_class column of CELLS.csv (empty = not reviewed), or use the "
                    "widget's Review cells gallery, whose .review.csv files work here too; a "
                    "few cells per class are enough to start (10 per class gave 95 % on LISC, "
                    "our unseen test lab); 3) `napari-ddrnet adapt --cells-csv REVIEWED.csv`, "
                    "which prints the held-out accuracy before and after; 4) `napari-ddrnet count "
                    "--weights MODEL` with the model it wrote.")
    a.add_argument("--cells-csv", required=True, type=Path, nargs="+",
                   metavar="REVIEWED.csv",
                   help="CELLS.csv file(s) with a reviewed_class column (empty = not reviewed)")
    a.add_argument("--out", type=Path, default=None, metavar="MODEL.safetensors",
                   help="adapted weights (card written beside them); default: a new file in "
                        "the user's model folder")
    a.add_argument("--single-cell", action="store_true",
                   help="rows without a crop_mode column (CSVs of older versions) are "
                        "single-cell images, as for count --single-cell; newer CSVs record how "
                        "each row was cut and are re-cut that way")
    a.add_argument("--device", default="auto", choices=DEVICES,
                   help="where to fine-tune (default auto: a GPU when there is one)")
    a.add_argument("--epochs", type=int, default=None, metavar="N",
                   help="passes over the training cells (default: 300-400 steps)")
    a.add_argument("--weights", default=None, metavar="BASE",
                   help="model to adapt: a .safetensors file or a model's name, as for count "
                        "(default: the shipped model)")
    a.add_argument("--overwrite", action="store_true",
                   help="replace the model at --out if there is one (default: refuse)")
    a.add_argument("--holdout", type=float, default=0.2, metavar="F",
                   help="fraction of reviewed cells held out to report accuracy before/after "
                        "(default 0.2; 0 trains on all)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--with-unreviewed", action="store_true",
                   help="also re-estimate the BatchNorm statistics on the unreviewed rows' "
                        "crops, without labels (no measurable gain on LISC)")
    a.add_argument("--quiet", action="store_true")
    d = sub.add_parser("demo", help="analyse the built-in synthetic smear")
    d.add_argument("--viewer", action="store_true", help="open napari with the widget")
    d.add_argument("--out", default="napari-ddrnet-demo", help="folder for the demo CSVs")
    d.add_argument("--device", default="auto", choices=DEVICES)
    d.add_argument("--seed", type=int, default=0)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``napari-ddrnet`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "count":
        from .classify import check_min_confidence
        from .scale import check_pixel_size

        try:
            if args.pixel_size is not None:
                check_pixel_size(args.pixel_size, "--pixel-size")
            check_min_confidence(args.min_confidence, "--min-confidence")
            if args.batch_size < 1:
                raise ValueError("--batch-size must be at least 1")
            if args.workers is not None and args.workers < 1:
                raise ValueError("--workers must be at least 1")
            if args.workers is not None and args.scheduler is not None:
                raise ValueError("give either --workers or --scheduler, not both")
            if args.tile_size is not None and args.tile_size < 64:
                raise ValueError("--tile-size must be at least 64")
            _check_outputs(args)
        except ValueError as exc:
            print(f"napari-ddrnet: error: {exc}", file=sys.stderr)
            return 2
    try:
        if args.command == "count":
            return _count(args)
        if args.command == "adapt":
            return _adapt(args)
        return _demo(args)
    except KeyboardInterrupt:  # one line, not a traceback; files are written atomically
        resume = " (plain count: rerun with --resume to go on)" if args.command == "count" \
            else ""
        print(f"napari-ddrnet: interrupted; CSVs already written are complete{resume}",
              file=sys.stderr)
        return 130


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse output paths that would lose a table, before any image is analysed."""
    outs = _outputs(args)
    if args.parts_dir is not None:
        outs.append(("--parts-dir", Path(args.parts_dir)))
    for i, (flag_a, a) in enumerate(outs):
        for flag_b, b in outs[i + 1:]:
            if a.resolve() == b.resolve():
                raise ValueError(f"{flag_a} and {flag_b} name the same file; one would "
                                 "overwrite the other")
    for flag, path in outs:
        if flag != "--parts-dir" and path.is_dir():
            raise ValueError(f"{flag} {path} is a folder: give a file name, e.g. "
                             f"{path / (flag[2:-4] + '.csv')}")


if __name__ == "__main__":
    sys.exit(main())

