"""CLI contract, CSV formats, reader/writer, corrupt and odd files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import needs_data, pbc_test_files
from PIL import Image

from napari_ddrnet import cli
from napari_ddrnet._reader import napari_get_reader
from napari_ddrnet._writer import write_points, write_shapes
from napari_ddrnet.classes import PBC_CLASSES
from napari_ddrnet.image_input import ImageInputError
from napari_ddrnet.image_io import read_image
from napari_ddrnet.report import counts_table, write_csv_atomic

CELL_COLS = ["image", "cell_id", "centroid_row", "centroid_col", "min_row", "min_col",
             "max_row", "max_col", "class", "confidence"] + [f"prob_{c}" for c in PBC_CLASSES]


@pytest.fixture
def files(tmp_path, smear):
    image, _ = smear
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(image).save(d / "a.png")
    tifffile.imwrite(d / "b.tif", image, resolution=(1e4 / 0.1, 1e4 / 0.1),
                     resolutionunit="CENTIMETER")
    (d / "c.jpg").write_bytes(b"not a jpeg at all")
    Image.fromarray(np.full((100, 120, 3), 228, np.uint8)).save(d / "empty.png")
    return d


def test_count_contract(files, tmp_path, capsys):
    cells_csv, counts_csv = tmp_path / "out" / "cells.csv", tmp_path / "out" / "counts.csv"
    rc = cli.main(["count", str(files / "a.png"), str(files / "b.tif"), str(files / "empty.png"),
                   "--cells-csv", str(cells_csv), "--counts-csv", str(counts_csv),
                   "--pixel-size", "0.1", "--device", "cpu", "--batch-size", "3",
                   "--min-confidence", "0.3"])
    assert rc == 0
    cells = pd.read_csv(cells_csv)
    assert list(cells.columns[:len(CELL_COLS)]) == CELL_COLS
    assert cells["pixel_size_um"].tolist() == pytest.approx([0.1] * len(cells))
    assert set(cells["pixel_size_source"]) == {"given"}
    assert set(cells["model"]) == {"ddrnet_wbc8_v8"}  # the shipped default, by its card name
    assert set(cells["image"]) == {str(files / "a.png"), str(files / "b.tif")}
    assert (cells.groupby("image").size() == 4).all()
    assert (cells["max_row"] > cells["min_row"]).all()
    assert set(cells["class"]) <= set(PBC_CLASSES) | {"unidentified"}
    assert (cells.loc[cells["class"] != "unidentified", "confidence"] >= 0.3).all()
    counts = pd.read_csv(counts_csv)
    assert list(counts.columns[:4]) == ["image", "class", "count", "percent"]
    assert counts.groupby("image")["count"].sum().to_dict() == {
        str(files / "a.png"): 4, str(files / "b.tif"): 4, str(files / "empty.png"): 0}
    # Same pixels, PNG vs TIFF: identical results.
    a = cells[cells["image"].str.endswith("a.png")].reset_index(drop=True)
    b = cells[cells["image"].str.endswith("b.tif")].reset_index(drop=True)
    np.testing.assert_allclose(a["confidence"], b["confidence"], rtol=1e-5)


def test_bad_file_is_skipped_and_reported(files, tmp_path, capsys):
    cells_csv, counts_csv = tmp_path / "cells.csv", tmp_path / "counts.csv"
    rc = cli.main(["count", str(files), "--cells-csv", str(cells_csv),
                   "--counts-csv", str(counts_csv), "--device", "cpu", "--quiet"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "c.jpg" in err
    counts = pd.read_csv(counts_csv)
    assert {"a.png", "b.tif", "empty.png"} == {p.split("/")[-1] for p in counts["image"]}


def test_usage_errors_exit_2(tmp_path, capsys):
    base = ["--cells-csv", str(tmp_path / "x.csv"), "--counts-csv", str(tmp_path / "y.csv")]
    assert cli.main(["count", str(tmp_path), *base]) == 2  # no images
    assert cli.main(["count", "x.png", "--pixel-size", "-1", *base]) == 2
    assert cli.main(["count", "x.png", "--min-confidence", "2", *base]) == 2
    assert "--min-confidence must be between 0 and 1" in capsys.readouterr().err  # the flag
    assert cli.main(["count", "x.png", "--pixel-size", "50", *base]) == 2  # implausible
    assert "--pixel-size" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_atomic_csv_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "counts.csv"
    path.write_text("old,complete\n1,2\n")

    class Boom(pd.DataFrame):
        def to_csv(self, *a, **k):
            raise OSError("disk full")

    with pytest.raises(OSError):
        write_csv_atomic(Boom({"a": [1]}), path)
    assert path.read_text() == "old,complete\n1,2\n"
    assert list(tmp_path.iterdir()) == [path]


def test_tiff_pixel_size_and_reader(tmp_path, smear):
    image, _ = smear
    ome = tmp_path / "ome.ome.tif"
    tifffile.imwrite(ome, image, photometric="rgb", metadata={"PhysicalSizeX": 0.12,
                                                              "PhysicalSizeY": 0.12})
    levels, px = read_image(ome)
    assert px == pytest.approx(0.12)
    np.testing.assert_array_equal(levels[0], image)
    reader = napari_get_reader(str(ome))
    (data, meta, kind), = reader(str(ome))
    assert kind == "image" and meta["rgb"] and meta["scale"] == pytest.approx((0.12, 0.12))
    assert napari_get_reader(str(tmp_path / "x.png")) is None
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, image)
    assert read_image(plain)[1] is None
    # A 1200 dpi scanner tag is no microscope calibration: the layer gets no scale from it.
    dpi = tmp_path / "dpi.tif"
    tifffile.imwrite(dpi, image, resolution=(1200, 1200), resolutionunit="INCH")
    (data, meta, _), = napari_get_reader(str(dpi))(str(dpi))
    assert "scale" not in meta and meta["metadata"]["pixel_size_um"] is None
    assert "µm" in meta["metadata"]["pixel_size_note"]


def test_pyramid_tiff_reads_lazily(tmp_path, smear):
    image, _ = smear
    path = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, subifds=1, tile=(128, 128), photometric="rgb")
        tw.write(image[::2, ::2], subfiletype=1, tile=(128, 128), photometric="rgb")
    levels, _ = read_image(path)
    assert len(levels) == 2 and levels[0].shape == image.shape
    np.testing.assert_array_equal(np.asarray(levels[0]), image)


def test_corrupt_and_unsupported_files(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(ImageInputError, match="Cannot read"):
        read_image(bad)
    with pytest.raises(ImageInputError, match="not found"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ImageInputError, match="Unsupported"):
        read_image(tmp_path / "x.txt")


def test_writers(tmp_path):
    feats = pd.DataFrame({"cell_id": [1, 2], "class": ["neutrophil", "lymphocyte"]})
    out = write_points(str(tmp_path / "p.csv"), np.array([[1.0, 2.0], [3.0, 4.0]]),
                       {"features": feats})
    df = pd.read_csv(out[0])
    assert df["class"].tolist() == ["neutrophil", "lymphocyte"]
    assert df["centroid_col"].tolist() == [2.0, 4.0]
    # Box vertices on pixel edges, as layers.layer_data draws them (pixel centres are integers).
    boxes = [np.array([[0, 0], [0, 5], [4, 5], [4, 0]]) - 0.5,
             np.array([[1, 1], [1, 2], [2, 2], [2, 1]]) - 0.5]
    df = pd.read_csv(write_shapes(str(tmp_path / "s.csv"), boxes, {"features": feats})[0])
    assert df[["min_row", "max_col"]].values.tolist() == [[0, 5], [1, 2]]


def test_demo_headless(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert len(pd.read_csv(tmp_path / "cells.csv")) == 4
    assert "white cells found" in capsys.readouterr().out


def test_missing_weights_exit_2(tmp_path, files, capsys):
    rc = cli.main(["count", str(files / "a.png"), "--cells-csv", str(tmp_path / "c.csv"),
                   "--counts-csv", str(tmp_path / "n.csv"),
                   "--weights", str(tmp_path / "nope.safetensors")])
    assert rc == 2 and "not found" in capsys.readouterr().err
    assert not (tmp_path / "c.csv").exists()


def test_manifest_is_valid_and_discoverable():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-ddrnet")
    assert pm.name == "napari-ddrnet"
    kinds = {c.id for c in pm.contributions.commands}
    assert {"napari-ddrnet.widget", "napari-ddrnet.get_reader", "napari-ddrnet.write_points",
            "napari-ddrnet.sample_smear"} <= kinds
    from importlib.metadata import metadata

    assert "Framework :: napari" in metadata("napari-ddrnet").get_all("Classifier")


def test_csvs_are_readable_by_the_lab_and_outputs_are_checked_first(files, tmp_path, capsys,
                                                                     monkeypatch):
    """CSVs get the permissions of a plain file (not a temporary file's 0600); output paths
    that would lose a table are refused before any image is analysed; Ctrl-C is one line."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        rc = cli.main(["count", str(files / "a.png"), "--cells-csv", str(tmp_path / "c.csv"),
                       "--counts-csv", str(tmp_path / "n.csv"), "--device", "cpu", "--quiet",
                       "--no-tta"])
    finally:
        os.umask(old)
    assert rc == 0
    for name in ("c.csv", "n.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    capsys.readouterr()
    same = ["--cells-csv", str(tmp_path / "x.csv"), "--counts-csv", str(tmp_path / "x.csv")]
    assert cli.main(["count", str(files / "a.png"), *same, "--device", "cpu"]) == 2
    assert "name the same file" in capsys.readouterr().err
    clash = ["--cells-csv", str(tmp_path / "y.csv"), "--counts-csv", str(tmp_path / "n2.csv"),
             "--summary-csv", str(tmp_path / "y.csv")]
    assert cli.main(["count", str(files / "a.png"), *clash, "--device", "cpu"]) == 2
    assert "--cells-csv and --summary-csv name the same file" in capsys.readouterr().err
    parts = ["--cells-csv", str(tmp_path / "p.csv"), "--counts-csv", str(tmp_path / "q.csv"),
             "--parts-dir", str(tmp_path / "p.csv")]
    assert cli.main(["count", str(files / "a.png"), *parts, "--device", "cpu"]) == 2
    assert "--cells-csv and --parts-dir name the same" in capsys.readouterr().err
    image_bytes = (files / "a.png").read_bytes()
    onto = ["--cells-csv", str(tmp_path / "r.csv"), "--counts-csv", str(files / "a.png")]
    assert cli.main(["count", str(files), *onto, "--device", "cpu"]) == 2
    assert "is one of the input images" in capsys.readouterr().err
    assert (files / "a.png").read_bytes() == image_bytes
    twice = ["--cells-csv", str(tmp_path / "s.csv"), "--counts-csv", str(tmp_path / "t.csv")]
    for mode in ([], ["--single-cell"]):  # a cell counted twice would skew the differential
        assert cli.main(["count", str(files / "a.png"), str(files), *mode, *twice]) == 2
        assert "listed twice" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()
    (tmp_path / "link").symlink_to(files)  # the same file under another spelling
    for other in (str((files / "a.png").absolute()), str(tmp_path / "link" / "a.png")):
        assert cli.main(["count", str(files / "a.png"), other, "--single-cell", *twice]) == 2
        assert "listed twice" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    folder = ["--cells-csv", str(tmp_path / "folder"), "--counts-csv", str(tmp_path / "k.csv")]
    assert cli.main(["count", str(files / "a.png"), *folder, "--device", "cpu"]) == 2
    assert "is a folder" in capsys.readouterr().err

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_count", interrupted)
    assert cli.main(["count", str(files / "a.png"), "--cells-csv", str(tmp_path / "c.csv"),
                     "--counts-csv", str(tmp_path / "n.csv")]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("mode", [[], ["--single-cell"]])
def test_a_run_where_every_image_fails_keeps_the_earlier_csvs(files, tmp_path, capsys, mode):
    """Only unreadable files must not replace yesterday's results with empty tables: nothing
    is written and the exit code is 1. A mistyped path is refused before anything runs
    (exit 2, as an empty folder)."""
    out = ["--cells-csv", str(tmp_path / "c.csv"), "--counts-csv", str(tmp_path / "n.csv"),
           "--device", "cpu", "--quiet", "--no-tta"]
    assert cli.main(["count", str(files / "a.png"), *mode, *out]) == 0
    before = (tmp_path / "c.csv").read_bytes(), (tmp_path / "n.csv").read_bytes()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert cli.main(["count", str(files / "c.jpg"), str(broken), *mode, *out]) == 1
    err = capsys.readouterr().err
    assert "none of the 2 images could be analysed" in err and "Traceback" not in err
    assert ((tmp_path / "c.csv").read_bytes(), (tmp_path / "n.csv").read_bytes()) == before
    fresh = ["--cells-csv", str(tmp_path / "new" / "c.csv"), "--counts-csv",
             str(tmp_path / "new" / "n.csv"), "--device", "cpu", "--quiet"]
    assert cli.main(["count", str(broken), *mode, *fresh]) == 1
    assert not (tmp_path / "new" / "c.csv.parts").exists()  # no empty parts folder left
    if not mode:  # nor the empty parents a --parts-dir made
        assert cli.main(["count", str(broken), *fresh, "--parts-dir",
                         str(tmp_path / "deep" / "a" / "b")]) == 1
        assert not (tmp_path / "deep").exists()
        assert cli.main(["count", str(broken), *fresh, "--parts-dir",
                         str(tmp_path / "x" / ".." / "y" / "p")]) == 1
        assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    capsys.readouterr()
    assert cli.main(["count", str(files / "a.png"), str(tmp_path / "no_such.png"), *mode,
                     *out]) == 2
    err = capsys.readouterr().err
    assert "no such file or folder" in err and "no_such.png" in err and "Traceback" not in err
    assert ((tmp_path / "c.csv").read_bytes(), (tmp_path / "n.csv").read_bytes()) == before
    if not mode:  # --resume reads no finished image again: a moved one is not refused
        assert cli.main(["count", str(tmp_path / "no_such.png"), *out, "--resume"]) == 1
        assert ((tmp_path / "c.csv").read_bytes(), (tmp_path / "n.csv").read_bytes()) == before


def test_a_model_without_a_shift_threshold_says_the_run_was_not_checked(files, tmp_path,
                                                                         capsys):
    """A model adapted to one lab carries no 'unlike the training data' threshold: count says
    the run was not checked instead of leaving the summary's columns silently empty."""
    import json
    import shutil

    from napari_ddrnet.weights import DEFAULT_WEIGHTS, metadata_path

    own = tmp_path / "mylab.safetensors"
    shutil.copy(DEFAULT_WEIGHTS, own)
    card = json.loads(metadata_path(DEFAULT_WEIGHTS).read_text())
    card.pop("shift_warning")
    metadata_path(own).write_text(json.dumps(dict(card, name="mylab")))
    out = ["--cells-csv", str(tmp_path / "c.csv"), "--counts-csv", str(tmp_path / "n.csv"),
           "--device", "cpu", "--quiet", "--no-tta", "--pixel-size", "0.1"]
    for mode in ([], ["--single-cell"]):
        assert cli.main(["count", str(files / "a.png"), *mode, *out, "--weights",
                         str(own)]) == 0
        err = capsys.readouterr().err
        assert "mylab carries no threshold" in err and "not checked" in err
    assert cli.main(["count", str(files / "a.png"), *out]) == 0
    assert "carries no threshold" not in capsys.readouterr().err


def test_an_empty_folder_beside_other_inputs_is_named(files, tmp_path, capsys):
    """A patient's folder left empty is left out with a warning, not silently."""
    empty = tmp_path / "patient_b"
    empty.mkdir()
    assert cli.main(["count", str(files / "a.png"), str(empty), "--cells-csv",
                     str(tmp_path / "c.csv"), "--counts-csv", str(tmp_path / "n.csv"),
                     "--device", "cpu", "--quiet", "--no-tta", "--pixel-size", "0.1"]) == 0
    err = capsys.readouterr().err
    assert f"{empty} holds no image files" in err


def test_summary_csv_pools_each_input(files, tmp_path, capsys):
    """--summary-csv: one differential per input as given. A folder of fields pools its
    images (the unreadable one is not counted among them); a file given alone is its own."""
    out = tmp_path / "out"
    alone = tmp_path / "other" / "z.png"
    alone.parent.mkdir()
    alone.write_bytes((files / "a.png").read_bytes())
    rc = cli.main(["count", str(files), str(alone), "--cells-csv",
                   str(out / "cells.csv"), "--counts-csv", str(out / "counts.csv"),
                   "--summary-csv", str(out / "summary.csv"), "--pixel-size", "0.1",
                   "--device", "cpu", "--no-tta"])
    assert rc == 1  # c.jpg is not an image
    assert "summary.csv" in capsys.readouterr().err
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == ["input", "images", "images_failed", "class", "count",
                                     "percent", "basis", "shift_score", "unlike_training"]
    assert summary["unlike_training"].isna().all()  # 8 and 4 cells: too few for a verdict
    cells = pd.read_csv(out / "cells.csv")
    folder = summary[summary["input"] == str(files)]
    assert set(folder["images"]) == {3}  # a.png, b.tif, empty.png
    assert set(folder["images_failed"]) == {1}  # c.jpg
    assert folder["count"].sum() == (cells["image"] != str(alone)).sum() == 8
    single = summary[summary["input"] == str(alone)]
    assert set(single["images"]) == {1} and single["count"].sum() == 4
    assert set(single["images_failed"]) == {0}
    pd.testing.assert_frame_equal(  # pooled, not summed per image: same percent basis
        folder[["class", "count"]].reset_index(drop=True),
        counts_table(cells.loc[cells["image"] != str(alone), "class"])[["class", "count"]])
    wbc = folder[folder["basis"] == "% of WBC"]
    if wbc["count"].sum():
        # the CSV writes 6 significant digits (33.3333): the sum is 100 to 1e-3
        assert wbc["percent"].sum() == pytest.approx(100.0, abs=1e-3)


def test_a_failing_per_input_check_never_costs_the_csvs(files, tmp_path, capsys,
                                                        monkeypatch):
    """--summary-csv scores each input as images are classified; if that check fails (here:
    forced), the run still writes all three CSVs and says the check was skipped."""
    from napari_ddrnet import shift_score

    def broken(*a, **k):
        raise ValueError("unknown shift-score reference 'running_v2'")

    monkeypatch.setattr(shift_score, "layer_sums", broken)
    cells = tmp_path / "big"
    cells.mkdir()
    for k in range(34):  # enough single-cell images in one input to be scored
        (cells / f"{k:02d}.png").write_bytes((files / "a.png").read_bytes())
    out = ["--cells-csv", str(tmp_path / "c.csv"), "--counts-csv", str(tmp_path / "n.csv"),
           "--summary-csv", str(tmp_path / "s.csv"), "--device", "cpu", "--quiet", "--no-tta"]
    assert cli.main(["count", "--single-cell", str(cells), *out]) == 0
    err = capsys.readouterr().err
    assert "per-input 'unlike the training data' check was skipped" in err
    assert "Traceback" not in err
    for name in ("c.csv", "n.csv", "s.csv"):
        assert (tmp_path / name).is_file()
    assert pd.read_csv(tmp_path / "s.csv")["unlike_training"].isna().all()


@needs_data("pbc")
def test_summary_csv_gives_a_patients_differential_from_single_cell_exports(tmp_path):
    """Two 'patients', each a folder of single-cell exports (PBC test images): the summary
    pools each folder's rows, equal to the differential of its rows in CELLS.csv."""
    picked = pbc_test_files(2)
    patients = {"p1": picked[:6], "p2": picked[6:16]}
    for p, fs in patients.items():
        (tmp_path / p).mkdir()
        for f in fs:
            (tmp_path / p / f"{f.parent.name}_{f.name}").symlink_to(f)
    out = tmp_path / "out"
    rc = cli.main(["count", "--single-cell", str(tmp_path / "p1"), str(tmp_path / "p2"),
                   "--cells-csv", str(out / "cells.csv"), "--counts-csv",
                   str(out / "counts.csv"), "--summary-csv", str(out / "summary.csv"),
                   "--device", "cpu", "--quiet", "--no-tta"])
    assert rc == 0
    cells, summary = pd.read_csv(out / "cells.csv"), pd.read_csv(out / "summary.csv")
    for p, fs in patients.items():
        mine = summary[summary["input"] == str(tmp_path / p)].reset_index(drop=True)
        assert set(mine["images"]) == {len(fs)} and mine["count"].sum() == len(fs)
        rows = cells[cells["image"].str.startswith(str(tmp_path / p) + "/")]
        expect = counts_table(rows["class"])
        pd.testing.assert_frame_equal(mine[["class", "count"]], expect[["class", "count"]])
