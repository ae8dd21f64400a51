"""Adapt to my lab: fine-tuning on reviewed cells, its card, its errors and the CLI contract."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import needs_data
from PIL import Image

from napari_ddrnet import cli
from napari_ddrnet.adapt import AdaptError, adapt_from_cells, split_holdout
from napari_ddrnet.classes import MATURE_WBC as LISC_CLASSES
from napari_ddrnet.weights import WEIGHTS_DIR, load_bundle, sha256_file
from training.paths import data_root


def _lisc_cells(groups_per_class: int, crops_per_group: int, seed: int = 0) -> pd.DataFrame:
    """LISC single-cell files as reviewed CELLS rows (``image``, ``reviewed_class``,
    ``cell_group``): ``groups_per_class`` distinct cells per class, a few crops of each."""
    root = data_root() / "lisc"
    lab = pd.read_csv(root / "labels.csv")
    rng = np.random.default_rng(seed)
    parts = []
    for c in LISC_CLASSES:
        groups = lab.loc[lab["class"] == c, "cell_group"].unique()
        for g in rng.choice(groups, groups_per_class, replace=False):
            parts.append(lab[lab["cell_group"] == g].head(crops_per_group))
    sel = pd.concat(parts, ignore_index=True)
    return pd.DataFrame({"image": [str(root / f) for f in sel["file"]],
                         "reviewed_class": sel["class"], "cell_group": sel["cell_group"]})


def test_split_holdout_keeps_groups_apart_and_every_class_in_training():
    y = np.repeat([0, 1, 2], [12, 12, 3])
    groups = np.array([f"g{i // 2}" for i in range(27)])  # two crops per group
    tr, ho = split_holdout(y, groups, 0.3, seed=1)
    assert not set(groups[tr]) & set(groups[ho])
    assert len(tr) + len(ho) == len(y)
    assert set(y[tr]) == {0, 1, 2}
    assert len(ho) and set(y[ho]) <= {0, 1, 2}
    assert split_holdout(y, groups, 0.0)[1].size == 0


@needs_data("lisc")
def test_adapting_to_lisc_improves_held_out_cells_and_writes_a_card(tmp_path):
    """An unseen lab (LISC): 8 cells per class, a quarter of the cells (whole groups) held out.
    The base is ``ddrnet_wbc8_v2``, which reads LISC poorly (~45 %): a short adaptation must
    clearly beat it. (``ddrnet_wbc8_v4``, default when this was written, read this small hold-out at
    78 %; the default's gain is checked on other groups below and in ``benchmarks.adaptation``.)"""
    cells = _lisc_cells(8, 2)
    out = tmp_path / "lab.safetensors"
    seen = []
    base_weights = WEIGHTS_DIR / "ddrnet_wbc8_v2.safetensors"
    report = adapt_from_cells(cells, out, base_weights=base_weights, single_cell=True, epochs=4,
                              holdout=0.25, seed=0, progress=lambda d, t: seen.append((d, t)))
    assert report.n_train + report.n_holdout == len(cells)
    assert report.n_holdout % 2 == 0  # both crops of a held-out cell are held out together
    assert report.after_accuracy >= report.before_accuracy + 0.15, report
    assert seen and seen[-1][0] == seen[-1][1]
    assert set(report.per_class) == set(LISC_CLASSES)

    base = json.loads(base_weights.with_suffix(".json").read_text())
    card = json.loads(out.with_suffix(".json").read_text())
    for key in ("architecture", "config", "classes", "input_size", "crop_fov_um", "mean", "std"):
        assert card[key] == base[key]
    assert card["base_model"]["sha256"] == sha256_file(base_weights)
    ad = card["adaptation"]
    assert sum(ad["cells_per_class"].values()) == report.n_train
    assert ad["holdout"]["before_accuracy"] == pytest.approx(report.before_accuracy)
    assert ad["holdout"]["after_accuracy"] == pytest.approx(report.after_accuracy)
    assert ad["date"].startswith("20") and len(ad["images"]) == len(cells)
    bundle = load_bundle(out)  # checksum and architecture verified
    assert bundle.classes == tuple(base["classes"])


def test_too_few_reviewed_cells_is_an_error_and_writes_nothing(tmp_path):
    out = tmp_path / "m.safetensors"
    nine = pd.DataFrame({"image": [f"x{i}.png" for i in range(12)],
                         "reviewed_class": ["neutrophil", "lymphocyte"] * 4 + [""] * 3
                         + ["unidentified"]})
    one_class = pd.DataFrame({"image": [f"x{i}.png" for i in range(20)],
                              "reviewed_class": ["neutrophil"] * 20})
    for cells in (nine, one_class):
        with pytest.raises(AdaptError, match="too few"):
            adapt_from_cells(cells, out, single_cell=True)
    assert not list(tmp_path.iterdir())


# -- CLI ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reviewed_csv(tmp_path_factory, smear):
    """A CELLS.csv from `count` on three copies of the synthetic smear, every cell reviewed
    (alternating neutrophil/lymphocyte: the contract, not the biology, is tested here)."""
    image, _ = smear
    tmp_path = tmp_path_factory.mktemp("reviewed")
    d = tmp_path / "in"
    d.mkdir()
    for k in range(3):
        Image.fromarray(np.rot90(image, 2 * k).copy()).save(d / f"f{k}.png")
    cells_csv = tmp_path / "cells.csv"
    rc = cli.main(["count", str(d), "--cells-csv", str(cells_csv), "--counts-csv",
                   str(tmp_path / "counts.csv"), "--pixel-size", "0.1", "--device", "cpu",
                   "--quiet", "--no-tta"])
    assert rc == 0
    cells = pd.read_csv(cells_csv)
    assert len(cells) >= 10
    cells["reviewed_class"] = ["neutrophil", "lymphocyte"] * (len(cells) // 2) + \
        ["monocyte"] * (len(cells) % 2)
    cells["reviewed"] = True
    cells.loc[0, "reviewed_class"] = None  # an unreviewed row is ignored
    cells.to_csv(cells_csv, index=False)
    return cells_csv


def test_cli_adapt_then_count_with_the_adapted_weights(reviewed_csv, tmp_path, capsys):
    out = tmp_path / "models" / "lab.safetensors"
    rc = cli.main(["adapt", "--cells-csv", str(reviewed_csv), "--out", str(out),
                   "--epochs", "1", "--holdout", "0", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["adaptation"]["source_files"] == [str(reviewed_csv)]
    n_reviewed = len(pd.read_csv(reviewed_csv)) - 1
    assert sum(card["adaptation"]["cells_per_class"].values()) == n_reviewed
    image = pd.read_csv(reviewed_csv)["image"].iloc[0]
    cells_csv = tmp_path / "again.csv"
    rc = cli.main(["count", image, "--weights", str(out), "--cells-csv", str(cells_csv),
                   "--counts-csv", str(tmp_path / "again_counts.csv"), "--pixel-size", "0.1",
                   "--device", "cpu", "--quiet", "--no-tta"])
    assert rc == 0
    assert len(pd.read_csv(cells_csv)) == 4


@pytest.mark.parametrize("defect, message", [
    ("missing_image", "cannot read image"),
    ("unknown_class", "unknown class"),
    ("missing_column", "pixel_size_um"),
    ("too_few", "too few"),
    ("no_csv", "not found"),
    ("text_geometry", "min_row must be numbers"),
])
def test_cli_adapt_errors_exit_2_and_write_nothing(reviewed_csv, tmp_path, capsys, defect,
                                                    message):
    cells = pd.read_csv(reviewed_csv)
    bad = tmp_path / "bad.csv"
    if defect == "missing_image":
        cells.loc[3, "image"] = str(tmp_path / "gone.png")
    elif defect == "unknown_class":
        cells.loc[2, "reviewed_class"] = "banana"
    elif defect == "missing_column":
        cells = cells.drop(columns="pixel_size_um")
    elif defect == "text_geometry":  # a hand-edited cell
        cells["min_row"] = cells["min_row"].astype(object)
        cells.loc[2, "min_row"] = "12a"
    elif defect == "too_few":
        cells.loc[5:, "reviewed_class"] = None
    if defect != "no_csv":
        cells.to_csv(bad, index=False)
    out = tmp_path / "models" / "m.safetensors"
    rc = cli.main(["adapt", "--cells-csv", str(bad), "--out", str(out), "--epochs", "1",
                   "--holdout", "0", "--quiet"])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.parent.exists() or not list(out.parent.iterdir())


@needs_data("lisc")
def test_unreviewed_rows_adapt_batchnorm_and_the_model_beats_base_on_other_groups(tmp_path):
    """The opt-in whole-run AdaBN (``unreviewed=True``) on a lab's run: 5 reviewed cells per
    class plus unreviewed rows of the same run (one with a missing image, skipped). The
    unreviewed crops are used without labels (AdaBN); on 40 LISC groups never seen, labelled or
    not, the adapted model must beat the base model clearly. A short run (80 epochs of the 25
    reviewed cells, 63 steps; ~30 CPU seconds alone, its time is the adaptation benchmark's
    business, not this test's). The 96 px v7 needed more than the 20 epochs (16 steps) that
    sufficed for the 64 px v6: on the same draw it gained 0.06 after 20, 0.22 after 40 and
    0.25 after 80 epochs (v6: 0.21 after 20; docs/results/v7_default/adapt_epochs_probe.log).
    The 112 px default v8 starts higher on this draw (0.71 against v7's 0.63) and ends at 0.88
    after 80 epochs as after 120 (gain 0.18; 0.13 after 40;
    docs/results/v8_default/adapt_epochs_probe.log), so the bar is a 0.15 gain to at least
    0.85."""

    from napari_ddrnet.adapt import cut_crops, predict_proba

    root = data_root() / "lisc"
    lab = pd.read_csv(root / "labels.csv")
    rng = np.random.default_rng(3)
    groups = rng.permutation(lab["cell_group"].unique())
    test_groups, run_groups = set(groups[:40]), groups[40:]
    run = lab[lab["cell_group"].isin(run_groups)].groupby("cell_group").head(1)
    reviewed = run.groupby("class").head(5).index
    cells = pd.DataFrame({"image": [str(root / f) for f in run["file"]],
                          "reviewed_class": np.where(run.index.isin(reviewed), run["class"], ""),
                          "cell_group": run["cell_group"]})
    unlabelled = int((cells["reviewed_class"] == "").sum())
    cells.loc[cells.index[cells["reviewed_class"] == ""][0], "image"] = str(tmp_path / "gone.png")
    report = adapt_from_cells(cells, tmp_path / "lab.safetensors", single_cell=True, holdout=0,
                              epochs=80, seed=0, unreviewed=True)
    assert report.n_train == 25 and report.n_unlabelled == unlabelled - 1
    card = json.loads((tmp_path / "lab.safetensors").with_suffix(".json").read_text())
    assert card["adaptation"]["unlabelled_crops"] == unlabelled - 1

    test = lab[lab["cell_group"].isin(test_groups)]
    base, adapted = load_bundle(None), load_bundle(tmp_path / "lab.safetensors")
    crops = cut_crops(pd.DataFrame({"image": [str(root / f) for f in test["file"]]}),
                      base.input_size, base.crop_fov_um, single_cell=True)
    present = [base.classes.index(c) for c in LISC_CLASSES]
    y = np.array([base.classes.index(c) for c in test["class"]])

    def accuracy(bundle):
        p = predict_proba(bundle.model, crops, bundle.mean, bundle.std, tta=False)
        return float((np.asarray(present)[p[:, present].argmax(1)] == y).mean())

    before, after = accuracy(base), accuracy(adapted)
    assert after >= before + 0.15 and after >= 0.85, (before, after)


# -- crop_mode: a CELLS.csv says how its crops were cut --------------------------------------

@pytest.fixture(scope="module")
def single_cell_csv(tmp_path_factory, smear):
    """CELLS.csv of `count --single-cell` on 12 single-cell cut-outs of the synthetic smear,
    every row reviewed (alternating classes: the contract is tested, not the biology)."""
    image, truth = smear
    tmp = tmp_path_factory.mktemp("single")
    d = tmp / "cells"
    d.mkdir()
    for k in range(12):
        r0, c0 = 40 + 30 * (k // 4), 40 + 50 * (k % 4)
        Image.fromarray(image[r0:r0 + 200, c0:c0 + 200].copy()).save(d / f"c{k:02d}.png")
    cells_csv = tmp / "cells.csv"
    rc = cli.main(["count", "--single-cell", str(d), "--cells-csv", str(cells_csv),
                   "--counts-csv", str(tmp / "counts.csv"), "--device", "cpu", "--quiet",
                   "--no-tta"])
    assert rc == 0
    cells = pd.read_csv(cells_csv)
    cells["reviewed_class"] = ["neutrophil", "lymphocyte"] * 6
    cells.to_csv(cells_csv, index=False)
    return cells_csv


def test_cells_csv_records_the_crop_mode(reviewed_csv, single_cell_csv):
    assert set(pd.read_csv(reviewed_csv)["crop_mode"]) == {"field"}
    assert set(pd.read_csv(single_cell_csv)["crop_mode"]) == {"single-cell"}


def test_adapt_recuts_single_cell_rows_as_counted_without_the_flag(single_cell_csv):
    """A forgotten --single-cell no longer re-cuts single-cell exports as fields: the rows'
    crop_mode decides, and the crops equal the ones `count --single-cell` classified."""
    from napari_ddrnet.adapt import cut_crops, reviewed_cells
    from napari_ddrnet.crop import crop_centre
    from napari_ddrnet.image_io import read_image

    bundle = load_bundle()
    cells = pd.read_csv(single_cell_csv)
    rows = reviewed_cells(cells, bundle.classes)
    crops = cut_crops(rows, bundle.input_size, bundle.crop_fov_um, None,
                      (rows["crop_mode"] == "single-cell").to_numpy())
    for k in (0, 7):
        levels, _ = read_image(rows["image"][k])
        np.testing.assert_array_equal(crops[k], crop_centre(np.asarray(levels[0]),
                                                            bundle.input_size))
    # rows written before crop_mode existed follow the flag, as before
    old = cells.drop(columns="crop_mode")
    assert set(reviewed_cells(old, bundle.classes, True)["crop_mode"]) == {"single-cell"}
    with pytest.raises(AdaptError, match="pixel_size_um|centroid"):
        reviewed_cells(old.drop(columns="pixel_size_um"), bundle.classes)


def test_cli_adapt_recuts_each_row_as_its_crop_mode_says(reviewed_csv, single_cell_csv,
                                                          tmp_path, capsys):
    """A row's crop_mode always decides; --single-cell only covers rows without one (CSVs of
    older versions), so an older single-cell CSV can be mixed with a newer field CSV."""
    n_field = len(pd.read_csv(reviewed_csv)) - 1  # one row is unreviewed
    n_single = len(pd.read_csv(single_cell_csv))
    old_single = tmp_path / "old_single.csv"
    pd.read_csv(single_cell_csv).drop(columns="crop_mode").to_csv(old_single, index=False)
    runs = {"flag_on_new_field_rows": (["--single-cell"], [reviewed_csv]),
            "both_new": ([], [reviewed_csv, single_cell_csv]),
            "old_single_with_flag": (["--single-cell"], [reviewed_csv, old_single])}
    for name, (flag, csvs) in runs.items():
        out = tmp_path / name / "m.safetensors"
        rc = cli.main(["adapt", "--cells-csv", *map(str, csvs), *flag, "--out", str(out),
                       "--epochs", "1", "--holdout", "0", "--quiet"])
        assert rc == 0, (name, capsys.readouterr().err)
        modes = json.loads(out.with_suffix(".json").read_text())["adaptation"]["crop_modes"]
        expect = {"field": n_field} if len(csvs) == 1 else {"field": n_field,
                                                             "single-cell": n_single}
        assert modes == expect, name


def test_a_review_in_the_class_column_gets_a_hint(reviewed_csv, tmp_path, capsys):
    cells = pd.read_csv(reviewed_csv)
    cells["class"] = cells["reviewed_class"]  # corrected in the wrong column
    cells["reviewed_class"] = None
    bad = tmp_path / "class_only.csv"
    cells.to_csv(bad, index=False)
    rc = cli.main(["adapt", "--cells-csv", str(bad), "--out", str(tmp_path / "m.safetensors"),
                   "--epochs", "1", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "too few" in err and f"{len(cells)} row(s) are marked reviewed" in err


def test_unknown_crop_mode_is_an_error(single_cell_csv):
    from napari_ddrnet.adapt import single_cell_rows

    cells = pd.read_csv(single_cell_csv)
    cells.loc[3, "crop_mode"] = "tile"
    with pytest.raises(AdaptError, match="unknown crop_mode"):
        single_cell_rows(cells)


def test_cli_adapt_device_and_progress_off_a_terminal(reviewed_csv, tmp_path, capsys):
    """`adapt --device`: an absent GPU is a clear error before any work; off a terminal (as
    here, a captured stderr) the progress comes as a few plain lines, not a bar."""
    import torch

    out = tmp_path / "m.safetensors"
    if not torch.cuda.is_available():
        rc = cli.main(["adapt", "--cells-csv", str(reviewed_csv), "--out", str(out),
                       "--device", "cuda", "--epochs", "1"])
        assert rc == 2 and "no CUDA GPU" in capsys.readouterr().err
        assert not out.exists()
    rc = cli.main(["adapt", "--cells-csv", str(reviewed_csv), "--out", str(out), "--device",
                   "cpu", "--epochs", "8", "--holdout", "0"])
    assert rc == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("adapting: ")]
    assert 2 <= len(lines) <= 11 and lines[-1].split()[1].split("/")[0] == \
        lines[-1].split()[1].split("/")[1]


def test_an_image_named_like_a_missing_value_is_a_name(reviewed_csv, tmp_path, capsys):
    """pandas reads a bare "NA" as missing; adapt must treat it as the file name it is."""
    cells = pd.read_csv(reviewed_csv)
    cells.loc[2, "image"] = "NA"
    bad = tmp_path / "na.csv"
    cells.to_csv(bad, index=False)
    rc = cli.main(["adapt", "--cells-csv", str(bad), "--out", str(tmp_path / "m.safetensors"),
                   "--epochs", "1", "--holdout", "0", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot read image NA" in err and "Traceback" not in err


def test_adapt_refuses_to_replace_a_model_unless_told(reviewed_csv, tmp_path, capsys):
    """A lab's earlier adapted model is not lost to a second `adapt --out` with its name."""
    out = tmp_path / "lab.safetensors"
    out.write_bytes(b"an earlier model")
    args = ["adapt", "--cells-csv", str(reviewed_csv), "--out", str(out), "--epochs", "1",
            "--holdout", "0", "--quiet"]
    rc = cli.main(args)
    err = capsys.readouterr().err
    assert rc == 2 and "exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"an earlier model"
    assert cli.main([*args, "--overwrite"]) == 0
    assert load_bundle(out).classes  # the new model, complete with its card


@pytest.mark.parametrize("sep, decimal, encoding", [
    (";", ",", "utf-8-sig"),  # a spreadsheet in a German or French locale
    (";", ".", "utf-8"),      # Swiss locales, pandas' to_csv(sep=";")
    (",", ".", "cp1252"),     # Excel's plain "CSV" on Windows
    (";", ",", "cp1252"),
])
def test_a_table_saved_by_a_spreadsheet_reads_as_the_one_count_wrote(reviewed_csv, tmp_path,
                                                                     sep, decimal, encoding):
    """Reviewed tables come back from spreadsheets in the locale's separator, decimal mark
    and code page; an image name with an umlaut tells the code pages apart."""
    cells = pd.read_csv(reviewed_csv)
    cells["image"] = cells["image"].str.replace(".png", "_Färbung.png", regex=False)
    cells.loc[1, "image"] = "0012"  # a name, however numeric it looks
    cells.to_csv(tmp_path / "ref.csv", index=False)
    saved = tmp_path / "saved.csv"
    cells.to_csv(saved, sep=sep, decimal=decimal, index=False, encoding=encoding)
    got, want = cli._read_reviewed([saved]), cli._read_reviewed([tmp_path / "ref.csv"])
    pd.testing.assert_frame_equal(got, want)


def test_a_model_is_named_by_its_name(smear, tmp_path, capsys):
    """`--weights ddrnet_wbc8_v5` picks the packaged model; an unknown name lists them."""
    image, _ = smear
    png = tmp_path / "smear.png"
    Image.fromarray(image).save(png)
    base = ["count", str(png), "--pixel-size", "0.1", "--device", "cpu", "--quiet",
            "--no-tta", "--counts-csv", str(tmp_path / "counts.csv")]
    cells_csv = tmp_path / "cells.csv"
    assert cli.main([*base, "--cells-csv", str(cells_csv), "--weights", "ddrnet_wbc8_v5"]) == 0
    assert set(pd.read_csv(cells_csv)["model"]) == {"ddrnet_wbc8_v5"}
    rc = cli.main([*base, "--cells-csv", str(tmp_path / "x.csv"), "--weights", "ddrnet_v99"])
    err = capsys.readouterr().err
    assert rc == 2 and "ddrnet_wbc8_v6" in err and "ddrnet_wbc8_v5" in err
    assert not (tmp_path / "x.csv").exists()


def test_a_model_name_is_found_however_it_is_written(tmp_path, monkeypatch):
    """A folder of the model's name in the working directory does not hide the model; the
    name may carry .safetensors or dots (a user's `lab_v1.2`); a file given is that file."""
    from napari_ddrnet.weights import weights_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NAPARI_DDRNET_HOME", str(tmp_path / "home"))
    v5 = WEIGHTS_DIR / "ddrnet_wbc8_v5.safetensors"
    (tmp_path / "ddrnet_wbc8_v5").mkdir()  # e.g. an output folder named after the model
    assert weights_path("ddrnet_wbc8_v5") == v5
    assert weights_path("ddrnet_wbc8_v5.safetensors") == v5
    mine = tmp_path / "home" / "models" / "lab_v1.2.safetensors"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"")
    assert weights_path("lab_v1.2") == mine
    (tmp_path / "ddrnet_wbc8_v4.safetensors").write_bytes(b"")  # a file here wins
    assert weights_path("ddrnet_wbc8_v4.safetensors").resolve() == \
        (tmp_path / "ddrnet_wbc8_v4.safetensors").resolve()


def test_decimal_commas_leave_names_alone():
    df = pd.DataFrame({"image": ["001", "002"], "reviewed_class": ["1", "2"],
                       "pixel_size_um": ["0,125", "0,1"], "note": ["a,b", "c"]})
    out = cli._decimal_commas(df.copy())
    assert list(out["image"]) == ["001", "002"] and list(out["reviewed_class"]) == ["1", "2"]
    assert list(out["pixel_size_um"]) == [0.125, 0.1] and list(out["note"]) == ["a,b", "c"]
