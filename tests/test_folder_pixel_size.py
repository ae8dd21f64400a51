"""A field whose red cells cannot be measured takes its folder's median estimate, not the
0.1 µm/px default (napari_ddrnet.scale.pool_by_folder; count, count --new-lab, cohorts)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_ddrnet import cli
from napari_ddrnet.scale import (
    MIN_POOLED_ESTIMATES,
    PixelSize,
    pool_by_folder,
    resolve_pixel_size,
)
from napari_ddrnet.synthetic import synthetic_smear

TRUE_UM = 0.15  # not the 0.1 default, so a fallback shows


def test_pool_by_folder_replaces_only_what_it_is_asked_to(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    sizes = {str(a / f"{i}.png"): PixelSize(0.10 + 0.01 * i, "estimated")
             for i in range(MIN_POOLED_ESTIMATES)}
    sizes[str(a / "declined.png")] = PixelSize(0.1, "default", "too few red cells")
    sizes[str(a / "typed.png")] = PixelSize(0.2, "metadata")
    sizes.update({str(b / f"{i}.png"): PixelSize(0.3, "estimated") for i in range(3)})
    sizes[str(b / "declined.png")] = PixelSize(0.1, "default")
    fields = pool_by_folder(sizes)
    assert list(fields) == [str(a / "declined.png")]  # b: too few estimates to pool
    px = fields[str(a / "declined.png")]
    assert px.source == "estimated" and px.um == pytest.approx(0.145)
    assert f"{MIN_POOLED_ESTIMATES} images of its folder" in px.note
    exports = pool_by_folder(sizes, replace=("estimated", "default"))
    assert set(exports) == {n for n in sizes if "/a/" in n and "typed" not in n}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Ten fields at 0.15 µm/px with red cells, and one (``declined.png``) whose two white
    cells lie on bare glass: nothing to measure, so its own pixel size is the default."""
    d = tmp_path_factory.mktemp("microscope")
    for i in range(MIN_POOLED_ESTIMATES):
        image, _ = synthetic_smear((300, 400), TRUE_UM, wbc_kinds=("neutrophil", "lymphocyte",
                                                                     "monocyte"), seed=40 + i)
        Image.fromarray(image).save(d / f"field{i:02d}.png")
    bare, _ = synthetic_smear((300, 400), TRUE_UM, wbc_kinds=("neutrophil", "lymphocyte"),
                              rbc_density=0.0, n_platelets=0, seed=1)
    assert resolve_pixel_size(bare).source == "default"
    Image.fromarray(bare).save(d / "declined.png")
    own = [resolve_pixel_size(np.asarray(Image.open(p))).um
           for p in sorted(d.glob("field*.png"))]
    return d, float(np.median(own))


def _count(folder, out, *extra):
    rc = cli.main(["count", str(folder), "--cells-csv", str(out / "cells.csv"),
                   "--counts-csv", str(out / "counts.csv"), "--device", "cpu", "--no-tta",
                   "--quiet", *extra])
    return rc, pd.read_csv(out / "cells.csv")


@pytest.mark.parametrize("mode", [[], ["--new-lab"], ["--workers", "2"]],
                         ids=["count", "new-lab", "workers"])
def test_a_declined_field_takes_its_folder_median(folder, tmp_path, capsys, mode):
    d, median = folder
    rc, cells = _count(d, tmp_path, *mode)
    assert rc == 0
    mine = cells[cells["image"] == str(d / "declined.png")]
    assert len(mine) >= 1  # its white cells are found and counted
    assert set(mine["pixel_size_source"]) == {"estimated"}
    assert mine["pixel_size_um"].iloc[0] == pytest.approx(median, abs=1e-6)  # CSV: 6 decimals
    assert abs(median - TRUE_UM) < 0.1 * TRUE_UM
    others = cells[cells["image"] != str(d / "declined.png")]
    assert set(others["pixel_size_source"]) == {"estimated"}
    assert others["pixel_size_um"].nunique() > 1  # measured fields keep their own value
    assert cells["image"].drop_duplicates().tolist() == sorted(
        str(p) for p in d.iterdir())  # input order, the re-analysed field in its place
    err = capsys.readouterr().err
    assert "declined.png: its red cells could not be measured" in err
    assert "warning: " + str(d / "declined.png") not in err  # no default-size warning


def test_too_few_fields_or_a_typed_size_change_nothing(folder, tmp_path, capsys):
    d, _ = folder
    few = tmp_path / "few"
    few.mkdir()
    for name in ("field00.png", "field01.png", "declined.png"):
        (few / name).symlink_to(d / name)
    rc, cells = _count(few, tmp_path)
    assert rc == 0
    mine = cells[cells["image"] == str(few / "declined.png")]
    assert set(mine["pixel_size_source"]) == {"default"}
    assert "warning: " + str(few / "declined.png") in capsys.readouterr().err
    rc, cells = _count(d, tmp_path, "--pixel-size", "0.15")
    assert rc == 0 and set(cells["pixel_size_source"]) == {"given"}
    assert "could not be measured" not in capsys.readouterr().err


def test_resume_pools_a_field_left_at_the_default(folder, tmp_path, monkeypatch):
    """A run killed between its passes left the declined field at the default: --resume
    re-analyses it with the folder's median, and the CSVs equal an uninterrupted run's."""
    from napari_ddrnet import cohort

    d, median = folder
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir()
    killed.mkdir()
    assert _count(d, whole)[0] == 0
    with monkeypatch.context() as m:
        m.setattr(cohort, "_pool_declined", lambda *a, **k: 0)  # the first pass only
        rc, first = _count(d, killed)
    assert rc == 0
    assert set(first.loc[first["image"] == str(d / "declined.png"), "pixel_size_source"]) \
        == {"default"}
    rc, resumed = _count(d, killed, "--resume")
    assert rc == 0
    pd.testing.assert_frame_equal(resumed, pd.read_csv(whole / "cells.csv"))
    assert (killed / "counts.csv").read_bytes() == (whole / "counts.csv").read_bytes()
