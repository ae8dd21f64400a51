"""Take the docs screenshots of napari with the widget and its results (run under xvfb-run).

    xvfb-run -a .venv/bin/python scripts/screenshot.py docs/images
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_ddrnet._sample_data import make_sample_smear
from napari_ddrnet._widget import DifferentialWidget


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-ddrnet", show=True)
    viewer.window.resize(1500, 900)
    data, meta, _ = make_sample_smear()[0]
    layer = viewer.add_image(data, **meta)
    widget = DifferentialWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="WBC differential (DDRNet)",
                                         area="right")
    dock.setMinimumWidth(520)
    widget._image.reset_choices()
    widget._image.value = layer
    worker = widget.run()
    t0 = time.time()
    while worker is not None and widget._worker is not None and time.time() - t0 < 120:
        QApplication.processEvents()
        time.sleep(0.05)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.reset_view()
    for _ in range(10):
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.screenshot(str(out / "widget.png"), canvas_only=False)
    print(f"saved {out / 'widget.png'}: {len(widget.result.cells)} cells")
    viewer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images"))
