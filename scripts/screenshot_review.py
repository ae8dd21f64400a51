"""Take the docs screenshots of the review gallery (run under xvfb-run).

    xvfb-run -a .venv/bin/python scripts/screenshot_review.py docs/images

A synthetic smear with a dozen white cells is analysed, the gallery is opened, two cells are
reviewed with the number keys (two cells the model left unidentified moved to their class) and the
window is captured: ``review-gallery.png`` (gallery, zoomed cell, counts after review) and
``review-uncertain.png`` (the "unidentified and uncertain" queue). Reviews are written to a
temporary user folder, never to the user's own.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["NAPARI_DDRNET_HOME"] = tempfile.mkdtemp(prefix="ddrnet-shot-")

import napari  # noqa: E402
from qtpy.QtCore import Qt  # noqa: E402
from qtpy.QtTest import QTest  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402

from napari_ddrnet._widget import DifferentialWidget  # noqa: E402
from napari_ddrnet.classes import DISPLAY_ORDER  # noqa: E402
from napari_ddrnet.synthetic import synthetic_smear  # noqa: E402

KINDS = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "neutrophil", "lymphocyte",
         "neutrophil", "eosinophil", "lymphocyte", "neutrophil", "monocyte", "neutrophil")


def settle(seconds: float = 1.0) -> None:
    t0 = time.time()
    while time.time() - t0 < seconds:
        QApplication.processEvents()
        time.sleep(0.02)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    image, truth = synthetic_smear((1100, 1500), 0.1, wbc_kinds=KINDS, seed=3)
    viewer = napari.Viewer(title="napari-ddrnet review", show=True)
    viewer.window.resize(1700, 1150)
    layer = viewer.add_image(image, rgb=True, name="smear", scale=(0.1, 0.1))
    widget = DifferentialWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="WBC differential (DDRNet)", area="right")
    dock.setMinimumWidth(560)
    widget._image.reset_choices()
    widget._image.value = layer
    widget._conf.value = 0.9  # a stricter threshold leaves a few cells for the uncertain queue
    widget.run()
    t0 = time.time()
    while widget._worker is not None and time.time() - t0 < 300:
        settle(0.1)
    gallery = widget.open_gallery()
    gallery.parent().setMinimumHeight(560)
    while gallery._thumb_worker is not None:
        settle(0.1)
    settle(1.0)
    gallery.list.setFocus()
    # Review as a technologist would, with the synthetic truth standing in for their eyes:
    # the first two cells the model left unidentified go to their class (number keys).
    review = widget.review
    unidentified = [c for c in gallery.shown() if review.class_of(c) == "unidentified"]
    for cell in unidentified[:2]:
        row = review.cells.iloc[review.row_of(cell)]
        d2 = ((truth["centroid_row"] - row["centroid_row"]) ** 2
              + (truth["centroid_col"] - row["centroid_col"]) ** 2)
        kind = truth["kind"].iloc[int(d2.to_numpy().argmin())]
        gallery.select(cell)
        QTest.keyClick(gallery.list, getattr(Qt.Key, f"Key_{DISPLAY_ORDER.index(kind) + 1}"))
    settle(1.5)
    viewer.screenshot(str(out / "review-gallery.png"), canvas_only=False)
    gallery._queue.setCurrentIndex(gallery._queue.findData("uncertain"))
    settle(1.5)
    viewer.screenshot(str(out / "review-uncertain.png"), canvas_only=False)
    print(f"saved review-gallery.png, review-uncertain.png: {len(widget.result.cells)} cells, "
          f"{widget.review.n_reviewed} reviewed, review file {widget.review.path}")
    viewer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images"))
