"""napari-ddrnet: automated white-blood-cell differential (scikit-image + DDRNet).

The core (``analyze``) is Qt-free; the napari widget, reader, writer and sample data live in the
underscore modules and are only imported by napari.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["analyze", "analyze_single_cell", "AnalysisResult", "count_cohort", "__version__"]


def __getattr__(name: str):
    # Lazy: importing the package (e.g. by napari's plugin discovery) must not load torch.
    if name in ("analyze", "AnalysisResult"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "analyze_single_cell":  # an analyser's export: one centred cell per image
        from . import single_cell

        return single_cell.analyze_single_cell
    if name == "count_cohort":  # many images, serially or on a dask Client
        from . import cohort

        return cohort.count_cohort
    raise AttributeError(name)
