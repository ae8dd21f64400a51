"""Single-cell images (CellaVision-style exports): one row per image, CLI and Python API."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import needs_data, pbc_test_files
from PIL import Image

from napari_ddrnet import cli
from napari_ddrnet.single_cell import analyze_single_cell, looks_like_single_cell
from training.paths import data_root


def _centred_cell(smear, k=0, side=300):
    image, truth = smear
    r, c = int(truth["centroid_row"][k]), int(truth["centroid_col"][k])
    h = side // 2
    pad = np.pad(image, ((h, h), (h, h), (0, 0)), mode="reflect")
    return pad[r:r + side, c:c + side], truth["kind"][k]


def test_one_row_with_the_centre_cell_box(smear, classifier):
    cell, _ = _centred_cell(smear)
    res = analyze_single_cell(cell, 0.1, classifier)
    assert len(res.cells) == 1 and res.labels is None
    row = res.cells.iloc[0]
    # The box is the segmented centre cell (not the whole image), and it contains the centre.
    assert row["min_row"] < 150 < row["max_row"] and row["min_col"] < 150 < row["max_col"]
    assert (row["max_row"] - row["min_row"]) < 250
    assert res.counts["count"].sum() == 1 and res.pixel_size_source == "given"


def test_no_cell_found_gives_the_whole_image(classifier):
    blank = np.full((200, 220, 3), 228, np.uint8)
    res = analyze_single_cell(blank, None, classifier)
    row = res.cells.iloc[0]
    assert (row["min_row"], row["min_col"], row["max_row"], row["max_col"]) == (0, 0, 200, 220)
    assert res.pixel_size_source == "default"


def test_looks_like_single_cell(smear, classifier):
    from napari_ddrnet.pipeline import analyze

    cell, _ = _centred_cell(smear)
    assert looks_like_single_cell(cell.shape, analyze(cell, 0.1, classifier).cells)
    image, _ = smear
    assert not looks_like_single_cell(image.shape, analyze(image, 0.1, classifier).cells)


def test_cli_single_cell_rows_and_errors(smear, tmp_path, capsys):
    d = tmp_path / "cells"
    d.mkdir()
    for k in range(4):
        Image.fromarray(_centred_cell(smear, k)[0]).save(d / f"cell{k}.png")
    Image.fromarray(np.full((1500, 1500, 3), 228, np.uint8)).save(d / "zfield.png")
    cells_csv, counts_csv = tmp_path / "cells.csv", tmp_path / "counts.csv"
    rc = cli.main(["count", "--single-cell", str(d), "--cells-csv", str(cells_csv),
                   "--counts-csv", str(counts_csv), "--device", "cpu", "--batch-size", "3",
                   "--pixel-size", "0.1", "--quiet"])
    assert rc == 1  # the field-sized image is skipped with a reason; the rest is written
    assert "too large for a single-cell image" in capsys.readouterr().err
    cells = pd.read_csv(cells_csv)
    assert [p.split("/")[-1] for p in cells["image"]] == [f"cell{k}.png" for k in range(4)]
    assert (cells["cell_id"] == 1).all() and (cells["pixel_size_um"] == 0.1).all()
    counts = pd.read_csv(counts_csv)
    assert counts.groupby("image")["count"].sum().tolist() == [1, 1, 1, 1]


@needs_data("pbc")
def test_cli_single_cell_on_pbc_test_images(tmp_path):
    """The shipped model through `count --single-cell` on real PBC test exports (3 per class):
    in-domain, so nearly all must be right."""
    files = [str(f) for f in pbc_test_files(3)]
    cells_csv, counts_csv = tmp_path / "cells.csv", tmp_path / "counts.csv"
    rc = cli.main(["count", "--single-cell", *files, "--cells-csv", str(cells_csv),
                   "--counts-csv", str(counts_csv), "--device", "cpu", "--quiet",
                   "--min-confidence", "0"])
    assert rc == 0
    cells = pd.read_csv(cells_csv)
    assert len(cells) == len(files) == 24
    truth = [f.split("/")[-2] for f in cells["image"]]
    assert (cells["class"] == truth).mean() >= 0.85


@needs_data("lisc")
def test_new_lab_mode_lifts_an_unseen_lab(tmp_path, capsys):
    """LISC (a lab never trained on, one crop per distinct cell, 16 per class) through
    `count --single-cell`. With ``ddrnet_wbc8_v2``, whose statistics are far from LISC's,
    adapting colour and BatchNorm statistics to the run's own cells (`--new-lab`) must lift
    accuracy substantially (37.5 -> 66.3 % when written). The default (``ddrnet_wbc8_v8``),
    self-trained on unlabelled labs, must read the lab as is clearly better than v2 as is, and
    its "unlike the training data" check must say the lab is not one it was checked on."""
    from napari_ddrnet.weights import DEFAULT_WEIGHTS, WEIGHTS_DIR

    root = data_root() / "lisc"
    groups: dict[str, dict[str, str]] = {}
    for r in csv.DictReader(open(root / "labels.csv", newline="")):
        groups.setdefault(r["class"], {}).setdefault(r["cell_group"], r["file"])
    files = [str(root / f) for c in sorted(groups)
             for _, f in sorted(groups[c].items())[:16]]
    v2 = WEIGHTS_DIR / "ddrnet_wbc8_v2.safetensors"
    acc, errs = {}, {}
    for name, flags in (("v2", ["--weights", str(v2)]),
                        ("v2 new-lab", ["--weights", str(v2), "--new-lab"]),
                        ("default", ["--weights", str(DEFAULT_WEIGHTS)])):
        cells_csv = tmp_path / "cells.csv"
        rc = cli.main(["count", "--single-cell", *files, "--cells-csv", str(cells_csv),
                       "--counts-csv", str(tmp_path / "counts.csv"), "--device", "cpu",
                       "--quiet", "--min-confidence", "0", *flags])
        assert rc == 0
        cells = pd.read_csv(cells_csv)
        assert len(cells) == 80
        acc[name] = float((cells["class"] == [p.split("/")[-2] for p in cells["image"]])
                          .mean())
        suffix = "+new-lab" if "--new-lab" in flags else ""  # adapted calls say so
        assert set(cells["model"]) == {Path(flags[1]).stem + suffix}
        errs[name] = capsys.readouterr().err
    assert "adapted to this lab" in errs["v2 new-lab"]
    # The default's per-lab card (fourteenth session) says this lab is not one of its own.
    assert "80 cells look unlike the images" in errs["default"]
    assert acc["v2 new-lab"] >= acc["v2"] + 0.15, acc
    assert acc["default"] >= acc["v2"] + 0.10, acc


def test_new_lab_mode_needs_enough_cells(smear, tmp_path, capsys):
    image, _ = smear
    Image.fromarray(image).save(tmp_path / "field.png")
    rc = cli.main(["count", str(tmp_path / "field.png"), "--cells-csv", str(tmp_path / "c.csv"),
                   "--counts-csv", str(tmp_path / "n.csv"), "--device", "cpu", "--quiet",
                   "--pixel-size", "0.1", "--new-lab"])
    cells = pd.read_csv(tmp_path / "c.csv")
    assert rc == 0 and len(cells) == 4
    assert "--new-lab not applied" in capsys.readouterr().err
    assert "+new-lab" not in cells["model"].iloc[0]  # not applied: the model's own calls


@needs_data("lisc")
def test_a_folder_of_exports_shares_its_pooled_pixel_size(tmp_path):
    """count --single-cell: the images of one folder (one analyser) share the median of their
    red-cell estimates, so no export falls back to the 0.1 default and areas are comparable;
    a typed pixel size still wins, and a folder of too few images keeps each image's own."""
    root = data_root() / "lisc" / "neutrophil"
    files = sorted(root.glob("*.jpg"))[:45]
    big, small = tmp_path / "big", tmp_path / "small"
    big.mkdir()
    small.mkdir()
    for f in files[:40]:
        (big / f.name).symlink_to(f)
    for f in files[40:]:  # other files: one image listed twice is refused
        (small / f.name).symlink_to(f)

    def run(*extra):
        cells_csv = tmp_path / "cells.csv"
        rc = cli.main(["count", "--single-cell", *extra, "--cells-csv", str(cells_csv),
                       "--counts-csv", str(tmp_path / "counts.csv"), "--device", "cpu",
                       "--quiet", "--no-tta"])
        assert rc == 0
        return pd.read_csv(cells_csv)

    cells = run(str(big), str(small))
    mine = cells[cells["image"].str.startswith(str(big))]
    assert len(mine) == 40 and mine["pixel_size_um"].nunique() == 1
    assert set(mine["pixel_size_source"]) == {"estimated"}
    assert 0.14 < mine["pixel_size_um"].iloc[0] < 0.20
    few = cells[cells["image"].str.startswith(str(small))]
    assert few["pixel_size_um"].nunique() > 1  # 5 images: each keeps its own estimate
    globbed = run(*sorted(str(p) for p in big.iterdir()))  # a shell glob: one folder still
    assert globbed["pixel_size_um"].nunique() == 1
    assert globbed["image"].tolist() == sorted(str(p) for p in big.iterdir())  # input order
    typed = run(str(big), "--pixel-size", "0.15")
    assert set(typed["pixel_size_source"]) == {"given"}
    assert typed["pixel_size_um"].tolist() == pytest.approx([0.15] * 40)
