"""ReviewSession without Qt: reassign, confirm, undo, queues, count target, autosave/restore."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_ddrnet.classes import DISPLAY_ORDER, PBC_CLASSES
from napari_ddrnet.review import (
    QUEUE_ALL,
    QUEUE_UNCERTAIN,
    ReviewSession,
    default_review_path,
    image_key,
    read_review,
)
from napari_ddrnet.schema import cells_csv_columns, prob_columns


def make_cells(calls: list[tuple[str, float, float]]) -> pd.DataFrame:
    """One cell per ``(class, top prob, second prob)``, on a diagonal, 40 px apart."""
    rows = []
    for i, (cls, p1, p2) in enumerate(calls):
        r = c = 20 + 40 * i
        probs = dict.fromkeys(prob_columns(PBC_CLASSES), 0.0)
        top = cls if cls in PBC_CLASSES else "neutrophil"
        second = "lymphocyte" if top != "lymphocyte" else "monocyte"
        probs[f"prob_{top}"], probs[f"prob_{second}"] = p1, p2
        rows.append({"cell_id": i + 1, "centroid_row": float(r), "centroid_col": float(c),
                     "min_row": r - 10, "min_col": c - 10, "max_row": r + 10, "max_col": c + 10,
                     "area_px": 300, "nucleus_area_px": 100, "area_um2": 3.0,
                     "nucleus_area_um2": 1.0, "touches_border": False, "class": cls,
                     "confidence": p1, **probs})
    return pd.DataFrame(rows)


CALLS = [("neutrophil", 0.90, 0.05), ("neutrophil", 0.55, 0.40), ("lymphocyte", 0.80, 0.10),
         ("unidentified", 0.45, 0.40), ("platelet", 0.99, 0.01), ("monocyte", 0.60, 0.50)]


def session(tmp_path=None, calls=CALLS, key="k" * 64) -> ReviewSession:
    path = None if tmp_path is None else tmp_path / "smear.review.csv"
    return ReviewSession(make_cells(calls), PBC_CLASSES, image_name="smear", key=key,
                         path=path, pixel_size_um=0.1)


def count_of(counts: pd.DataFrame, cls: str, col: str = "count") -> int:
    return int(counts.set_index("class").at[cls, col])


def test_reassign_confirm_undo_and_counts():
    s = session()
    assert s.n_reviewed == 0 and s.counts()["n_reviewed"].sum() == 0
    s.reassign(2, "monocyte")
    assert s.class_of(2) == "monocyte" and s.is_reviewed(2)
    assert s.cells.at[1, "model_class"] == "neutrophil"
    counts = s.counts()
    assert count_of(counts, "neutrophil") == 1 and count_of(counts, "monocyte") == 2
    assert count_of(counts, "neutrophil", "model_count") == 2
    assert count_of(counts, "monocyte", "n_reviewed") == 1
    # % of WBC: 4 white cells after review (unidentified and platelet are apart).
    assert counts.set_index("class").at["monocyte", "percent"] == pytest.approx(50.0)
    assert counts.set_index("class").at["monocyte", "model_percent"] == pytest.approx(25.0)
    assert list(counts["class"][:len(DISPLAY_ORDER)]) == list(DISPLAY_ORDER)
    s.reassign(4, "lymphocyte")  # an unidentified cell joins the differential
    assert count_of(s.counts(), "unidentified") == 0
    assert s.confirm([1, 2, 3]) == 2  # cell 2 was already reviewed
    assert s.n_reviewed == 4
    assert s.undo() == [1, 3]  # the confirm was one step
    assert s.n_reviewed == 2
    assert s.undo() == [4] and s.class_of(4) == "unidentified" and not s.is_reviewed(4)
    assert s.undo() == [2] and s.class_of(2) == "neutrophil"
    assert s.undo() == [] and not s.can_undo
    with pytest.raises(ValueError):
        s.reassign(1, "dragon")


def test_listeners_hear_every_change():
    s = session()
    heard = []
    s.listeners.append(heard.append)
    s.reassign(1, "ig")
    s.confirm([5])
    s.undo()
    assert heard == [[1], [5], [5]]


def test_queues():
    s = session()
    # Grouped by class in clinical order, least certain (smallest margin) first in a group.
    assert s.queue(QUEUE_ALL) == [2, 1, 3, 6, 5, 4]
    # Model-unidentified or margin < 0.25, least certain first.
    assert s.queue(QUEUE_UNCERTAIN) == [4, 6, 2]
    assert s.queue("neutrophil") == [2, 1]
    s.reassign(1, "eosinophil")
    assert s.queue("neutrophil") == [2] and s.queue("eosinophil") == [1]


def test_count_target_counts_first_white_cells_in_scan_order():
    calls = [("neutrophil", 0.9, 0.05)] * 3 + [("erythroblast", 0.9, 0.05)] \
        + [("lymphocyte", 0.9, 0.05)] * 3
    cells = make_cells(calls).sample(frac=1.0, random_state=1)  # scan order != table order
    s = ReviewSession(cells, PBC_CLASSES)
    s.target = 4
    mask = s.counted_mask(s.target)
    counted = set(s.cells.loc[mask, "cell_id"])
    assert counted == {1, 2, 3, 4, 5}  # 4th white cell is cell 5; the erythroblast met on the way
    counts = s.counts()
    assert count_of(counts, "neutrophil") == 3 and count_of(counts, "lymphocyte") == 1
    assert count_of(counts, "erythroblast") == 1
    assert counts["wbc_target"].iloc[0] == 4
    assert s.target_status() == (4, True)
    assert sorted(s.queue(QUEUE_ALL)) == [1, 2, 3, 4, 5]
    # Reclassifying a counted white cell pushes the count one cell further.
    s.reassign(2, "platelet")
    assert 6 in set(s.cells.loc[s.counted_mask(s.target), "cell_id"])
    s.target = 200
    assert s.target_status() == (5, False)
    assert count_of(s.counts(None), "lymphocyte") == 3


def test_autosave_restore_by_key_and_geometry(tmp_path):
    s = session(tmp_path)
    assert not s.path.exists()  # nothing written before the first change
    s.reassign(3, "monocyte")
    s.confirm([1])
    saved = read_review(s.path)
    assert saved is not None and len(saved) == len(CALLS)
    assert set(saved["image_key"]) == {"k" * 64}
    assert list(saved.columns[:-1]) == cells_csv_columns(PBC_CLASSES)
    row = saved.set_index("cell_id").loc[3]
    assert row["class"] == "monocyte" and row["model_class"] == "lymphocyte"
    assert row["reviewed_class"] == "monocyte" and bool(row["reviewed"])
    assert saved.set_index("cell_id").loc[2, "reviewed_class"] == ""
    # Re-analysis: ids renumbered, boxes moved by up to 2 px, one cell lost -> still matched.
    cells = make_cells(CALLS).iloc[::-1].reset_index(drop=True)
    cells["cell_id"] = np.arange(10, 10 + len(cells))
    cells[["min_row", "max_row"]] += 2
    cells = cells[cells["cell_id"] != 12]
    again = ReviewSession(cells, PBC_CLASSES, key="k" * 64, path=s.path)
    assert again.restore() == 2
    by_box = again.cells.set_index("min_col")
    assert by_box.at[90, "class"] == "monocyte" and by_box.at[90, "reviewed"]  # old cell 3
    assert by_box.at[10, "reviewed"] and by_box.at[10, "class"] == "neutrophil"  # old cell 1
    assert again.n_reviewed == 2 and not again.can_undo
    # Farther than the tolerance: not the same cell.
    moved = make_cells(CALLS)
    moved[["min_col", "max_col"]] += 3
    assert ReviewSession(moved, PBC_CLASSES, key="k" * 64, path=s.path).restore() == 0
    # Another image (another key) is never restored onto.
    other = ReviewSession(make_cells(CALLS), PBC_CLASSES, key="x" * 64, path=s.path)
    assert other.restore() == 0 and other.n_reviewed == 0


def test_autosave_failure_is_reported_not_raised(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    s = ReviewSession(make_cells(CALLS), PBC_CLASSES, key="k", path=blocker / "r.review.csv")
    s.reassign(1, "ig")  # the folder cannot be created: remembered, not raised
    assert s.last_save_error and s.class_of(1) == "ig"


def test_image_key_is_content_based():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (300, 400, 3), np.uint8)
    assert image_key(a) == image_key(a.copy())
    b = a.copy()
    b[0, 0, 0] ^= 1  # a sampled pixel
    assert image_key(b) != image_key(a)
    assert image_key(a[:, :399]) != image_key(a)
    da = pytest.importorskip("dask.array")
    assert image_key(da.from_array(a, chunks=(64, 64, 3))) == image_key(a)


def test_default_review_path(tmp_path):
    img = tmp_path / "smear.ome.tif"
    assert default_review_path("smear", "abc" * 10, img) == tmp_path / "smear.review.csv"
    # The file beside the image holds another image's review: it is kept, a keyed name is used.
    s = ReviewSession(make_cells(CALLS), PBC_CLASSES, key="abc" * 10,
                      path=tmp_path / "smear.review.csv")
    s.confirm([1])
    assert default_review_path("smear", "abc" * 10, img) == tmp_path / "smear.review.csv"
    other = default_review_path("smear", "fed" * 10, img)
    assert other == tmp_path / "smear-fedfedfedfed.review.csv"
    p = default_review_path("my smear/1", "0123456789abcdef", None, user_dir=tmp_path / "rv")
    assert p == tmp_path / "rv" / "my_smear_1-0123456789ab.review.csv"
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        p = default_review_path("s", "0123456789abcdef", ro / "s.tif", user_dir=tmp_path / "u")
        assert p.parent == tmp_path / "u" or ro.stat().st_uid == 0
    finally:
        ro.chmod(0o755)


def test_empty_image_session():
    s = ReviewSession(make_cells([]).reindex(columns=make_cells(CALLS).columns), PBC_CLASSES)
    assert s.queue(QUEUE_ALL) == [] and s.queue(QUEUE_UNCERTAIN) == []
    s.target = 100
    assert s.target_status() == (0, False)
    counts = s.counts()
    assert counts["count"].sum() == 0 and counts["model_count"].sum() == 0
    assert len(s.table_for_csv()) == 0 and s.confirm([]) == 0 and s.undo() == []
