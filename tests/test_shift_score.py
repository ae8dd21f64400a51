"""The label-free "unlike the training data" check (napari_ddrnet.shift_score)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import needs_data, pbc_test_files
from PIL import Image
from torch import nn

from napari_ddrnet import cli
from napari_ddrnet.shift_score import (
    SHIFT_MIN_CROPS,
    CropSample,
    RecentRuns,
    lab_stats,
    running_stats,
    shift_from_means,
    shift_score,
    shift_verdict,
)
from napari_ddrnet.weights import DEFAULT_WEIGHTS, WEIGHTS_DIR, load_bundle


def _running_card(bundle, **entries) -> dict:
    """The weights' card entry as a running-statistics score (whatever reference it ships
    with), with ``entries`` set."""
    card = {k: v for k, v in bundle.meta["shift_warning"].items() if k != "labs"}
    return dict(card, reference="running", **entries)


def _crops(values) -> np.ndarray:
    return np.stack([np.full((4, 4, 3), v % 256, np.uint8) for v in values])


def test_crop_sample_is_bounded_uniform_and_reproducible():
    a, b = CropSample(size=64, seed=3), CropSample(size=64, seed=3)
    for start in range(0, 2000, 100):  # fed in 20 batches, as a run is
        a.add(_crops(range(start, start + 100)))
        b.add(_crops(range(start, start + 100)))
    a.add(None)
    assert a.n_seen == 2000 and a.crops.shape == (64, 4, 4, 3)
    np.testing.assert_array_equal(a.crops, b.crops)
    # Crops from across the whole run, not the first or the last batches: the crop values
    # wrap at 256, so tell the batches apart by a second sample that stores batch numbers.
    c = CropSample(size=64, seed=3)
    for batch in range(20):
        c.add(_crops([batch] * 100))
    batches = c.crops[:, 0, 0, 0].astype(int)
    assert len(set(batches.tolist())) >= 15
    assert 6.5 <= batches.mean() <= 12.5  # uniform over 0..19: mean 9.5, sd of the mean ~0.7
    small = CropSample(size=64)
    small.add(_crops(range(10)))
    assert small.crops.shape == (10, 4, 4, 3) and small.n_seen == 10
    assert CropSample().crops.shape[0] == 0


def test_crop_sample_restricted_to_the_kept_cells():
    crops = np.zeros((300, 4, 4, 3), np.uint8)
    crops[:, :, :, 0], crops[:, :, :, 1] = (np.arange(300) % 256)[:, None, None], \
        (np.arange(300) // 256)[:, None, None]  # crop k carries k
    sample = CropSample(size=50, seed=1)
    for start in range(0, 300, 60):
        sample.add(crops[start:start + 60])
    keep = np.arange(300) % 3 == 0  # e.g. the cells inside a drawn region
    sample.restrict(keep)
    assert sample.n_seen == 100
    ids = sample.crops[:, 0, 0, 0].astype(int) + 256 * sample.crops[:, 0, 0, 1].astype(int)
    assert 0 < len(ids) < 50 and all(keep[ids])
    with pytest.raises(ValueError, match="one flag per crop"):
        sample.restrict(np.ones(7, bool))


def test_recent_runs_pool_small_runs_and_forget_old_ones():
    runs = RecentRuns(min_cells=10, max_cells=16)
    crops, n, cells = runs.add("a", _crops([1] * 4))
    assert (len(crops), n, cells) == (4, 1, 4)
    crops, n, cells = runs.add("b", _crops([2] * 4))
    assert (len(crops), n, cells) == (8, 2, 8)
    crops, n, cells = runs.add("a", _crops([3] * 4))  # "a" again: replaces its entry
    assert (len(crops), n, cells) == (8, 2, 8) and sorted(set(crops[:, 0, 0, 0])) == [2, 3]
    crops, n, cells = runs.add("c", _crops([4] * 40))  # enough alone: judged alone, sampled
    assert (len(crops), n, cells) == (16, 1, 40) and set(crops[:, 0, 0, 0]) == {4}
    crops, n, cells = runs.add("d", _crops([5] * 2))  # pooled with the newest earlier run
    assert (n, cells) == (2, 42) and set(crops[:, 0, 0, 0]) == {4, 5}
    crops, n, cells = runs.add("e", None)  # a run without crops (a slide) gets no verdict
    assert (len(crops), n, cells) == (0, 0, 0)
    assert shift_verdict(load_bundle(DEFAULT_WEIGHTS), crops) is None


def test_score_is_zero_against_the_crops_own_statistics_and_takes_the_nearest_lab():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    x = torch.randn(20, 3, 8, 8) * 2 + 1
    stats = lab_stats(model, x, batch_size=7)
    # The first layer sees x itself: its statistics are x's per-channel mean and variance.
    torch.testing.assert_close(stats[0][0], x.double().mean(dim=(0, 2, 3)))
    torch.testing.assert_close(stats[0][1], x.double().var(dim=(0, 2, 3), unbiased=False))
    assert shift_score(model, x, [stats]) == pytest.approx(0.0, abs=1e-9)
    far = [(m + 10.0, v) for m, v in stats]
    assert shift_score(model, x, [far]) > 1.0
    assert shift_score(model, x, [far, stats]) == pytest.approx(0.0, abs=1e-9)
    # Untrained running statistics (mean 0, var 1): x's first-layer mean ~1 is ~1 sd away.
    assert shift_score(model, x) > 0.3
    with pytest.raises(ValueError):
        shift_from_means([m for m, _ in stats], [])
    with pytest.raises(ValueError):
        shift_score(model, x[:0])
    assert len(running_stats(model)) == 2


def test_verdict_needs_a_threshold_and_enough_cells():
    bundle = load_bundle(DEFAULT_WEIGHTS)
    # The shipped card: every layer against each labelled lab's own statistics, by the
    # fourteenth session's rule and gate, made for the default v8 by v7's command
    # (benchmarks/results/domain_shift_ddrnet_wbc8_v8_per-lab_layers_kaggle-shifted.log:
    # 1.2 x 0.0426).
    card = bundle.meta["shift_warning"]
    assert card["reference"] == "per-lab" and "layers" not in card
    assert set(card["labs"]) == {"pbc_train", "bccd_trainfold"}
    assert card["threshold"] == pytest.approx(0.0511, abs=1e-4)
    s = bundle.input_size
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (SHIFT_MIN_CROPS - 1, s, s, 3), dtype=np.uint8)
    assert shift_verdict(bundle, crops) is None  # too few cells for a verdict
    older = load_bundle(WEIGHTS_DIR / "ddrnet_wbc8_v4.safetensors")  # carries no threshold
    assert shift_verdict(older, np.concatenate([crops, crops])) is None
    v = shift_verdict(bundle, np.concatenate([crops, crops]), n_cells=500)
    assert v is not None and v.n_crops == 62 and v.n_cells == 500
    assert v.warns  # uniform noise is nothing like a stained cell
    assert "500 cells look unlike" in v.summary()


@needs_data("pbc")
def test_cli_warns_on_a_colour_cast_and_not_on_the_training_lab(tmp_path, capsys):
    """40 PBC test exports (5 per class) through `count --single-cell`: as they are, the run
    looks like the training data (no warning); with a strong cyan cast (red x 0.6, one of the
    casts the threshold was checked on), the same cells warn."""
    files = pbc_test_files(5)
    cast_dir = tmp_path / "cyan"
    cast_dir.mkdir()
    for i, f in enumerate(files):
        rgb = np.asarray(Image.open(f).convert("RGB")).astype(np.float32)
        rgb[..., 0] *= 0.6
        Image.fromarray(rgb.round().astype(np.uint8)).save(cast_dir / f"{i:02d}.png")
    errs = {}
    for name, inputs in (("as is", [str(f) for f in files]), ("cyan", [str(cast_dir)])):
        rc = cli.main(["count", "--single-cell", *inputs, "--cells-csv",
                       str(tmp_path / f"{name}.csv"), "--counts-csv", str(tmp_path / "n.csv"),
                       "--device", "cpu", "--quiet", "--no-tta"])
        assert rc == 0 and len(pd.read_csv(tmp_path / f"{name}.csv")) == 40
        errs[name] = capsys.readouterr().err
    assert "look unlike the images" not in errs["as is"]
    assert "40 cells look unlike the images" in errs["cyan"]
    assert "napari-ddrnet adapt" in errs["cyan"]


def test_pooled_sums_give_the_same_score_as_the_crops_at_once():
    """Plain `count` adds each image's layer-mean sums from the workers: the pooled verdict
    must equal the score of all the crops together."""
    from napari_ddrnet.shift_score import layer_sums, verdict_from_sums

    bundle = load_bundle(DEFAULT_WEIGHTS)
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    sums = layer_sums(bundle, crops[:13]) + layer_sums(bundle, crops[13:])
    pooled = verdict_from_sums(bundle, sums, 40)
    whole = shift_verdict(bundle, crops)
    assert pooled.score == pytest.approx(whole.score, rel=1e-9)
    assert verdict_from_sums(bundle, sums, 31) is None  # too few cells
    # Tasks of one dask worker share the cached model: concurrent passes must not mix.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda c: layer_sums(bundle, c),
                              [crops[:13], crops[13:]] * 4))
    for got, want in zip(parts, [layer_sums(bundle, crops[:13]),
                                 layer_sums(bundle, crops[13:])] * 4):
        np.testing.assert_allclose(got, want, rtol=1e-9)
    older = load_bundle(WEIGHTS_DIR / "ddrnet_wbc8_v4.safetensors")
    assert layer_sums(older, crops) is None


@needs_data("pbc")
def test_plain_count_warns_on_a_cast_field(tmp_path, capsys):
    """Plain `count` (the per-image, restartable path): a field of 36 real
    PBC cells does not warn; the same field with a strong cyan cast does."""
    from conftest import pbc_mosaic

    Image.fromarray(pbc_mosaic()).save(tmp_path / "plain.png")
    Image.fromarray(pbc_mosaic((0.6, 1.0, 1.0))).save(tmp_path / "cyan.png")
    errs = {}
    for name in ("plain", "cyan"):
        rc = cli.main(["count", str(tmp_path / f"{name}.png"), "--cells-csv",
                       str(tmp_path / f"{name}.csv"), "--counts-csv", str(tmp_path / "n.csv"),
                       "--device", "cpu", "--quiet", "--no-tta"])
        assert rc == 0 and len(pd.read_csv(tmp_path / f"{name}.csv")) >= 32
        errs[name] = capsys.readouterr().err
    assert "look unlike the images" not in errs["plain"]
    assert "cells look unlike the images the classifier learned from" in errs["cyan"]
    # Resumed: the finished image's share comes from its parts (the file now holds the clean
    # field, which is not read again), so the verdict is the same.
    Image.fromarray(pbc_mosaic()).save(tmp_path / "cyan.png")
    rc = cli.main(["count", str(tmp_path / "cyan.png"), "--cells-csv",
                   str(tmp_path / "cyan.csv"), "--counts-csv", str(tmp_path / "n.csv"),
                   "--device", "cpu", "--quiet", "--no-tta", "--resume"])
    again = capsys.readouterr().err
    assert rc == 0
    assert again[again.index("warning"):] == errs["cyan"][errs["cyan"].index("warning"):]


@needs_data("pbc")
def test_plain_count_checks_a_slide_tile_by_tile(tmp_path, capsys):
    """A pyramidal slide in plain `count` is analysed as tile tasks that keep no crops: each
    tile sends its share of the check, and the slide's verdict is the one of all its cells."""
    import tifffile
    from conftest import pbc_mosaic

    from napari_ddrnet.pipeline import analyze
    from napari_ddrnet.shift_score import shift_verdict

    for name, gains in (("plain", (1.0, 1.0, 1.0)), ("cyan", (0.6, 1.0, 1.0))):
        mosaic = pbc_mosaic(gains)
        with tifffile.TiffWriter(tmp_path / f"{name}.ome.tif") as tw:
            tw.write(mosaic, tile=(128, 128), photometric="rgb", subifds=1,
                     metadata={"axes": "YXS"})
            tw.write(mosaic[::2, ::2], tile=(128, 128), photometric="rgb", subfiletype=1)
    errs = {}
    for name in ("plain", "cyan"):
        rc = cli.main(["count", str(tmp_path / f"{name}.ome.tif"), "--cells-csv",
                       str(tmp_path / f"{name}.csv"), "--counts-csv", str(tmp_path / "n.csv"),
                       "--device", "cpu", "--quiet", "--no-tta", "--tile-size", "256"])
        assert rc == 0
        errs[name] = capsys.readouterr().err
    cells = pd.read_csv(tmp_path / "cyan.csv")
    assert len(cells) >= 32
    assert "look unlike the images" not in errs["plain"]
    assert f"{len(cells)} cells look unlike the images" in errs["cyan"]
    # The tiles' pooled sums give the score of the same cells' crops taken at once.
    result = analyze(pbc_mosaic((0.6, 1.0, 1.0)), None, tile_size=256, keep_crops=True,
                     device="cpu")
    whole = shift_verdict(load_bundle(DEFAULT_WEIGHTS), result.crops)
    assert len(result.cells) == len(cells)
    assert f"shift score {whole.score:.3f} >" in errs["cyan"], (whole.score, errs["cyan"])
    # On a 2-worker cluster the tiles' shares travel back from the workers: the same verdict.
    rc = cli.main(["count", str(tmp_path / "cyan.ome.tif"), "--cells-csv",
                   str(tmp_path / "cyan2.csv"), "--counts-csv", str(tmp_path / "n2.csv"),
                   "--device", "cpu", "--quiet", "--no-tta", "--tile-size", "256",
                   "--workers", "2"])
    err = capsys.readouterr().err
    assert rc == 0
    assert err[err.index("warning"):] == errs["cyan"][errs["cyan"].index("warning"):]


@needs_data("pbc")
def test_summary_checks_each_input_so_a_shifted_patient_is_named(tmp_path, capsys):
    """Each input (a patient's folder) of a run of several gets its own check: in one run of a
    clean patient and a cyan-cast one, the summary marks the cast one, stderr names it (with
    or without --summary-csv), and each input's score equals the score of that input counted
    alone. Both count paths."""
    from conftest import pbc_mosaic

    files = pbc_test_files(5)
    clean, cyan = tmp_path / "clean", tmp_path / "cyan"
    for d in (clean, cyan):
        d.mkdir()
    for i, f in enumerate(files):
        rgb = np.asarray(Image.open(f).convert("RGB"))
        Image.fromarray(rgb).save(clean / f"{i:02d}.png")
        cast = rgb.astype(np.float32) * np.asarray([0.6, 1.0, 1.0], np.float32)
        Image.fromarray(cast.round().astype(np.uint8)).save(cyan / f"{i:02d}.png")

    def run(mode, inputs, tag):
        rc = cli.main(["count", *mode, *map(str, inputs), "--cells-csv",
                       str(tmp_path / f"{tag}.csv"), "--counts-csv", str(tmp_path / "n.csv"),
                       "--summary-csv", str(tmp_path / f"{tag}_summary.csv"), "--device",
                       "cpu", "--quiet", "--no-tta"])
        assert rc == 0
        summary = pd.read_csv(tmp_path / f"{tag}_summary.csv").groupby("input").first()
        return summary, capsys.readouterr().err

    summary, err = run(["--single-cell"], [clean, cyan], "both")
    assert not summary.loc[str(clean), "unlike_training"]
    assert summary.loc[str(cyan), "unlike_training"]
    assert "1 of 2 inputs look unlike" in err and f"{cyan} (score" in err
    rc = cli.main(["count", "--single-cell", str(clean), str(cyan), "--cells-csv",
                   str(tmp_path / "nosum.csv"), "--counts-csv", str(tmp_path / "n.csv"),
                   "--device", "cpu", "--quiet", "--no-tta"])  # named without --summary-csv too
    err_nosum = capsys.readouterr().err
    assert rc == 0 and "1 of 2 inputs look unlike" in err_nosum
    assert f"{cyan} (score" in err_nosum and f"{clean} (score" not in err_nosum
    alone, _ = run(["--single-cell"], [cyan], "alone")
    assert alone.loc[str(cyan), "shift_score"] == pytest.approx(
        summary.loc[str(cyan), "shift_score"], abs=2e-4)

    fields = {"plain": tmp_path / "f_plain", "cast": tmp_path / "f_cast"}
    for d, gains in zip(fields.values(), [(1.0, 1.0, 1.0), (0.6, 1.0, 1.0)]):
        d.mkdir()
        Image.fromarray(pbc_mosaic(gains)).save(d / "field.png")
    summary, err = run([], fields.values(), "fields")  # the per-image, restartable path
    assert not summary.loc[str(fields["plain"]), "unlike_training"]
    assert summary.loc[str(fields["cast"]), "unlike_training"]
    assert f"{fields['cast']} (score" in err
    rc = cli.main(["count", *map(str, fields.values()), "--cells-csv",
                   str(tmp_path / "fnosum.csv"), "--counts-csv", str(tmp_path / "n.csv"),
                   "--device", "cpu", "--quiet", "--no-tta"])
    err = capsys.readouterr().err
    assert rc == 0 and f"{fields['cast']} (score" in err and "summary column" not in err


def test_threshold_benchmark_refuses_packs_cut_for_another_model(tmp_path):
    """``benchmarks.domain_shift`` calibrates a model's threshold on its selection packs: packs
    cut at another field of view or size (the 64 px / 30 µm ones for the 96 px / 38 µm
    ``ddrnet_wbc8_v7``) would put wrong-sized cells through it, so it stops before scoring."""
    import json

    from benchmarks.domain_shift import main

    (tmp_path / "cut.json").write_text(json.dumps({"crop_fov_um": 30.0, "input_size": 64}))
    with pytest.raises(SystemExit, match="38 µm"):
        main(["--weights", str(WEIGHTS_DIR / "ddrnet_wbc8_v7.safetensors"), "--packs",
              str(tmp_path), "--out", str(tmp_path)])
    assert not list(tmp_path.glob("domain_shift_*"))


@needs_data("lisc")
def test_threshold_benchmark_cuts_the_unseen_lab_at_the_model_size():
    """LISC (reported beside the calibration sets) is cut at the model's input size, not at
    64 px whatever the model (it was, until the 96 px model)."""
    from benchmarks.domain_shift import load_sets

    crops = load_sets(None, ["lisc"], 96)["lisc"]
    assert crops.shape == (1287, 96, 96, 3) and crops.dtype == np.uint8


def test_threshold_card_entry_names_the_packs_it_was_fixed_on(tmp_path):
    """The card's ``shift_warning`` says how to reproduce its threshold, packs included (a
    96 px model's threshold comes from ``packs96_38``, not the default ``packs30``)."""
    import json
    import shutil

    from benchmarks.domain_shift import write_card

    weights = tmp_path / "m.safetensors"
    shutil.copy(WEIGHTS_DIR / "ddrnet_wbc8_v7.safetensors", weights)
    shutil.copy(WEIGHTS_DIR / "ddrnet_wbc8_v7.json", tmp_path / "m.json")
    payload = {"threshold": 0.25, "min_crops": SHIFT_MIN_CROPS, "margin": 1.2,
               "calibration": ["pbc_val", "bccd_valfold"], "weights": "m"}
    write_card(weights, payload, tmp_path / "packs96_38")
    entry = json.loads((tmp_path / "m.json").read_text())["shift_warning"]
    assert entry["threshold"] == 0.25
    assert f"--packs {tmp_path / 'packs96_38'}" in entry["benchmark"]
    assert f"--weights {weights}" in entry["benchmark"]
    assert load_bundle(weights).meta["shift_warning"]["threshold"] == 0.25


def test_card_may_score_a_subset_of_the_layers(tmp_path):
    """A card's ``layers`` (the twelfth session's rule picked the stem's for
    ``ddrnet_wbc8_v7``) restricts the score to those BatchNorm layers: the verdict equals the
    score of those layers alone, for pooled sums as for crops at once; a name the model lacks is
    an error, not a silent score over nothing."""
    import json
    import shutil
    from dataclasses import replace

    from napari_ddrnet.shift_score import (
        bn_input_moments,
        bn_layer_names,
        layer_sums,
        select_layers,
        verdict_from_sums,
    )

    bundle = load_bundle(WEIGHTS_DIR / "ddrnet_wbc8_v7.safetensors")
    names = bn_layer_names(bundle.model)
    assert names[0] == "stem.norm" and len(names) == 18
    assert select_layers(bundle.model, None) == list(range(18))
    assert select_layers(bundle.model, ["drdb.fuse.1", "stem.norm"]) == [13, 0]
    with pytest.raises(ValueError, match="lacks"):
        select_layers(bundle.model, ["head.bn"])
    for bad in ([], "stem.norm", ["stem.norm", "stem.norm"]):
        with pytest.raises(ValueError, match="distinct layer names"):
            select_layers(bundle.model, bad)

    rng = np.random.default_rng(2)
    crops = rng.integers(0, 256, (40, 96, 96, 3), dtype=np.uint8)
    from napari_ddrnet.preprocess import crops_to_tensor

    means, _ = bn_input_moments(bundle.model, crops_to_tensor(crops, "cpu", bundle.mean,
                                                               bundle.std), squares=False)
    ref = running_stats(bundle.model)
    stem_only = shift_from_means([means[0].mean(0)], [[ref[0]]])
    every = shift_from_means([m.mean(0) for m in means], [ref])
    card = _running_card(bundle, layers=["stem.norm"])
    stem_bundle = replace(bundle, meta=dict(bundle.meta, shift_warning=card))
    full_bundle = replace(bundle, meta=dict(bundle.meta, shift_warning=dict(
        card, layers=None)))
    assert shift_verdict(stem_bundle, crops).score == pytest.approx(stem_only, rel=1e-9)
    assert shift_verdict(full_bundle, crops).score == pytest.approx(every, rel=1e-9)
    assert stem_only != pytest.approx(every, rel=1e-3)
    sums = layer_sums(stem_bundle, crops[:7]) + layer_sums(stem_bundle, crops[7:])
    assert verdict_from_sums(stem_bundle, sums, 40).score == pytest.approx(stem_only, rel=1e-9)
    bad = replace(bundle, meta=dict(bundle.meta, shift_warning=dict(card, layers=["x"])))
    with pytest.raises(ValueError, match="lacks"):
        shift_verdict(bad, crops)

    # The benchmark writes the chosen group's names and the command that chose it.
    from benchmarks.domain_shift import write_card

    weights = tmp_path / "m.safetensors"
    shutil.copy(WEIGHTS_DIR / "ddrnet_wbc8_v7.safetensors", weights)
    shutil.copy(WEIGHTS_DIR / "ddrnet_wbc8_v7.json", tmp_path / "m.json")
    payload = {"threshold": 0.5, "min_crops": SHIFT_MIN_CROPS, "margin": 1.2,
               "calibration": ["pbc_val", "bccd_valfold"], "weights": "m", "group": "stem",
               "layers": ["stem.norm"]}
    write_card(weights, payload, tmp_path / "packs96_38", ["all", "stem"])
    entry = json.loads((tmp_path / "m.json").read_text())["shift_warning"]
    assert entry["layers"] == ["stem.norm"] and entry["threshold"] == 0.5
    assert "--layers all stem --write-card" in entry["benchmark"]
    assert "domain_shift_m_layers.json" in entry["benchmark"]


def test_threshold_benchmark_picks_the_layer_group_by_the_rule():
    """Among the groups that meet the rule (no in-domain false alarms, strong casts caught),
    the one that catches the most mild-cast draws; ties to the earlier group in ``GROUPS``;
    none when no group meets the rule (the card is then left alone)."""
    from benchmarks.domain_shift import choose, group_layers

    def g(met, mild):
        return {"rule_met": met, "mild_warn_share": mild}

    assert choose({"all": g(True, 0.0), "stem": g(True, 0.67), "glfeb": g(False, 0.9)}) == "stem"
    assert choose({"stem": g(True, 0.5), "drdb": g(True, 0.5), "all": g(True, 0.1)}) == "drdb"
    assert choose({"all": g(False, 1.0)}) is None
    names = ["stem.norm", "drdb.paths.0.body.0.1", "drdb.fuse.1", "glfeb.local.0.1"]
    assert group_layers(names, "stem") == [0]
    assert group_layers(names, "stem+drdb") == [0, 1, 2]
    assert group_layers(names, "all") == [0, 1, 2, 3]
    with pytest.raises(SystemExit, match="no such"):
        group_layers(["head.bn"], "glfeb")


def test_threshold_benchmark_kaggle_counts_as_shifted_only_when_asked():
    """``--kaggle shifted`` (fourteenth session) takes Kaggle TEST out of the in-domain clause:
    a candidate that warns on every Kaggle draw fails the old rule and meets the new one."""
    from benchmarks.domain_shift import (
        CALIBRATION,
        IN_DOMAIN,
        IN_DOMAIN_KAGGLE_SHIFTED,
        REPORT,
        score_group,
    )

    assert set(IN_DOMAIN) - set(IN_DOMAIN_KAGGLE_SHIFTED) == {"kaggle_test"}
    rng = np.random.default_rng(6)
    far = {"kaggle_test", "pbc_test_cyan", "pbc_test_yellow", "lisc"}
    moments = {k: ([torch.as_tensor(rng.normal(3.0 if k in far else 0.0, 0.1, (40, 4)))], None)
               for k in CALIBRATION + REPORT}
    ref = [[(torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64))]]
    old = score_group(moments, ref, 20, lambda _m: None)
    new = score_group(moments, ref, 20, lambda _m: None, in_domain=IN_DOMAIN_KAGGLE_SHIFTED)
    assert old["sets"]["kaggle_test"]["warn_share"] == 1.0
    assert not old["rule_met"] and new["rule_met"]


def test_spread_term_reads_how_far_the_spread_moved():
    """Statistic ``mean+var`` (thirteenth session) adds ``|ln(sd_run / sd_ref)|`` per channel:
    zero for the reference itself, ``ln 2`` for a run twice (or half) as spread, whichever
    way; ``shift_score`` computes the run's variance over all pixels of its crops."""
    ref = [(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))]
    mu = [torch.zeros(2, dtype=torch.float64)]
    for k in (2.0, 0.5):
        var = [torch.full((2,), k * k, dtype=torch.float64)]
        assert shift_from_means(mu, [ref], eps=0.0, variances=var) == pytest.approx(np.log(2))
    assert shift_from_means(mu, [ref], eps=0.0, variances=[torch.ones(2)]) == pytest.approx(0)
    assert shift_from_means(mu, [ref], eps=0.0) == 0.0  # the means alone see nothing
    with pytest.raises(ValueError, match="layers of variances"):
        shift_from_means(mu, [ref], variances=[])

    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3)).eval()
    x = torch.randn(40, 3, 8, 8) * 3 + 1  # sd 3 against the untrained running var of 1
    stats = lab_stats(model, x)
    assert shift_score(model, x, [stats], statistic="mean+var") == pytest.approx(0, abs=1e-9)
    plain, spread = shift_score(model, x), shift_score(model, x, statistic="mean+var")
    assert spread - plain == pytest.approx(np.log(3), abs=0.05)
    with pytest.raises(ValueError, match="unknown shift-score statistic"):
        shift_score(model, x, statistic="median")


def test_a_spread_card_pools_sums_as_the_crops_at_once():
    """A card whose ``statistic`` is ``mean+var``: each image sends sums of means and of mean
    squares, and the pooled verdict equals the score of all crops together (a slide's tiles,
    a cohort's workers); means-only sums (an older worker) or an unknown statistic are
    errors, not a silent score of something else."""
    from dataclasses import replace

    from napari_ddrnet.preprocess import crops_to_tensor
    from napari_ddrnet.shift_score import (
        bn_input_moments,
        layer_sums,
        moments_of,
        select_layers,
        verdict_from_sums,
    )

    bundle = load_bundle(WEIGHTS_DIR / "ddrnet_wbc8_v7.safetensors")
    # Two layers, the later one first: the spread must be read through the named positions.
    names = ["glfeb.local.0.1", "stem.norm"]
    card = _running_card(bundle, statistic="mean+var", layers=names)
    spread = replace(bundle, meta=dict(bundle.meta, shift_warning=card))
    rng = np.random.default_rng(3)
    crops = rng.integers(0, 256, (40, 96, 96, 3), dtype=np.uint8)
    sums = layer_sums(spread, crops[:11]) + layer_sums(spread, crops[11:])
    plain_sums = layer_sums(bundle, crops)
    assert len(sums) == 2 * len(plain_sums)
    pooled = verdict_from_sums(spread, sums, 40)
    x = crops_to_tensor(crops, "cpu", bundle.mean, bundle.std)
    keep = select_layers(bundle.model, names)
    assert keep[0] > 0 and keep[1] == 0
    means, squares = bn_input_moments(bundle.model, x)
    mu, var = moments_of([means[i] for i in keep], [squares[i] for i in keep])
    ref = running_stats(bundle.model)
    want = shift_from_means(mu, [[ref[i] for i in keep]], variances=var)
    assert pooled.score == pytest.approx(want, rel=1e-9)
    assert shift_verdict(spread, crops).score == pytest.approx(want, rel=1e-9)
    assert want > shift_from_means(mu, [[ref[i] for i in keep]])  # the spread adds to it
    with pytest.raises(ValueError, match="do not fit"):
        verdict_from_sums(spread, plain_sums, 40)
    odd = replace(bundle, meta=dict(bundle.meta, shift_warning=dict(card, statistic="max")))
    with pytest.raises(ValueError, match="unknown shift-score statistic"):
        shift_verdict(odd, crops)


def test_threshold_benchmark_synthetic_shifts_and_statistic_choice(tmp_path):
    """The thirteenth session's five mild shifts do what they are named for, and the choice
    over (layer group, statistic) prefers the means on a tie, then the group order; the card
    written for a spread score names its statistic and the command that chose it."""
    import json
    import shutil

    from benchmarks.domain_shift import blur, candidate_key, choose, pale, write_card, zoom

    yy, xx = np.mgrid[:96, :96]
    disc = np.where(((yy - 47.5) ** 2 + (xx - 47.5) ** 2 < 20 ** 2)[..., None], 60, 220)
    crops = np.repeat(disc[None].astype(np.uint8), 2, 0).repeat(3, -1)[..., :3]
    crops = np.ascontiguousarray(crops)
    dark = (crops[0, ..., 0] < 140).sum()
    assert (zoom(crops)[0, ..., 0] < 140).sum() == pytest.approx(dark * 1.25 ** 2, rel=0.05)
    assert blur(crops).std() < crops.std() and blur(crops).mean() == pytest.approx(
        crops.mean(), abs=0.5)
    assert pale(crops).min() == pytest.approx(60 + 0.3 * 195, abs=1)
    assert pale(crops).max() == pytest.approx(220 + 0.3 * 35, abs=1)
    for f in (blur, zoom, pale):
        out = f(crops)
        assert out.shape == crops.shape and out.dtype == np.uint8

    def g(met, mild):
        return {"rule_met": met, "mild_warn_share": mild}

    assert candidate_key("stem", "mean") == "stem"
    assert choose({"stem": g(True, 0.5), "all / mean+var": g(True, 0.5)}) == "stem"
    assert choose({"stem": g(True, 0.5), "all / mean+var": g(True, 0.6)}) == "all / mean+var"
    assert choose({"stem / mean+var": g(True, 0.6), "all / mean+var": g(True, 0.6),
                   "stem": g(False, 0.9)}) == "all / mean+var"

    weights = tmp_path / "m.safetensors"
    shutil.copy(WEIGHTS_DIR / "ddrnet_wbc8_v7.safetensors", weights)
    shutil.copy(WEIGHTS_DIR / "ddrnet_wbc8_v7.json", tmp_path / "m.json")
    payload = {"threshold": 0.9, "min_crops": SHIFT_MIN_CROPS, "margin": 1.2,
               "calibration": ["pbc_val", "bccd_valfold"], "weights": "m", "group": "stem",
               "layers": ["stem.norm"], "statistic": "mean+var"}
    write_card(weights, payload, tmp_path / "p", ["all", "stem"], ["mean", "mean+var"], "five")
    entry = json.loads((tmp_path / "m.json").read_text())["shift_warning"]
    assert entry["statistic"] == "mean+var" and entry["layers"] == ["stem.norm"]
    assert "--statistics mean mean+var --mild five --write-card" in entry["benchmark"]
    assert "domain_shift_m_layers_spread.json" in entry["benchmark"]
    assert load_bundle(weights).meta["shift_warning"]["statistic"] == "mean+var"


def test_masked_probe_leaves_black_fill_out_of_the_stem_statistics():
    """``benchmarks.masked_shift_probe``: black fill is not specimen, and every stem position
    whose 4 x 4 window touches it is left out of the sums (the stem has stride 4)."""
    from benchmarks.masked_shift_probe import specimen_mask, stem_sums
    from napari_ddrnet.preprocess import crops_to_tensor

    bundle = load_bundle(WEIGHTS_DIR / "ddrnet_wbc8_v7.safetensors")
    rng = np.random.default_rng(4)
    crops = rng.integers(150, 230, (2, 96, 96, 3), dtype=np.uint8)
    crops[1, :32] = 0  # a black band over the top third of the second crop
    keep = specimen_mask(crops)
    assert keep[0].all() and not keep[1, :32].any() and keep[1, 40:].all()
    x = crops_to_tensor(crops, "cpu", bundle.mean, bundle.std)
    s, q, n = stem_sums(bundle.model, x, keep)
    assert n[0] == 24 * 24  # every position of the clean crop
    # The band and the mask's 3 px margin cover rows 0-34: stem rows 0-8 are out.
    assert n[1] == (24 - 9) * 24
    assert s.shape == q.shape == (2, bundle.model.stem.norm.num_features)


def test_threshold_benchmark_keeps_a_card_no_candidate_beats():
    """``--write-card`` changes a card only for a candidate that catches more mild-shift
    draws than the one the card holds (the rule's "the card changes only if it beats the
    shipped one"); the card's candidate is found by its layers and statistic."""
    from benchmarks.domain_shift import card_candidate

    groups = {"all": {"group": "all", "statistic": "mean", "layers": ["a", "b"]},
              "stem": {"group": "stem", "statistic": "mean", "layers": ["a"]},
              "stem / mean+var": {"group": "stem", "statistic": "mean+var", "layers": ["a"]}}
    assert card_candidate(None, groups) is None
    assert card_candidate({"threshold": 0.2}, groups) == "all"  # no layers: every layer
    assert card_candidate({"layers": ["a"]}, groups) == "stem"
    assert card_candidate({"layers": ["a"], "statistic": "mean+var"}, groups) == "stem / mean+var"
    assert card_candidate({"layers": ["z"]}, groups) is None
    # The shipped v7 card holds every layer's means against the per-lab reference.
    bundle = load_bundle(DEFAULT_WEIGHTS)
    shipped = {"all": {"group": "all", "statistic": "mean", "layers": ["stem.norm"]}}
    assert card_candidate(bundle.meta["shift_warning"], shipped, "per-lab") == "all"
    assert card_candidate(bundle.meta["shift_warning"], shipped) is None


def test_a_per_lab_card_scores_against_the_nearest_lab_it_carries(tmp_path):
    """A ``per-lab`` card (fourteenth session) carries each reference lab's channel means and
    variances of its layers; the plugin's verdict then equals :func:`shift_score` against
    those labs (the nearest counting), pooled sums included, and a card whose statistics do
    not fit the model, or that names a reference this version lacks, is an error."""
    import json
    import shutil
    from dataclasses import replace

    from benchmarks.domain_shift import card_candidate, write_card
    from napari_ddrnet.preprocess import crops_to_tensor
    from napari_ddrnet.shift_score import (
        bn_input_moments,
        layer_sums,
        moments_of,
        select_layers,
        verdict_from_sums,
    )

    bundle = load_bundle(WEIGHTS_DIR / "ddrnet_wbc8_v7.safetensors")
    model = bundle.model
    rng = np.random.default_rng(5)
    lab_a = rng.integers(120, 230, (12, 96, 96, 3), dtype=np.uint8)
    lab_b = rng.integers(0, 256, (12, 96, 96, 3), dtype=np.uint8)

    def tensor(c):
        return crops_to_tensor(c, "cpu", bundle.mean, bundle.std)

    refs = {"a": lab_stats(model, tensor(lab_a)), "b": lab_stats(model, tensor(lab_b))}
    names = ["stem.norm", "glfeb.local.0.1"]
    keep = select_layers(model, names)
    labs = {k: {"mean": [r[i][0].tolist() for i in keep], "var": [r[i][1].tolist() for i in keep]}
            for k, r in refs.items()}
    card = {"reference": "per-lab", "threshold": 0.1, "min_crops": 4, "layers": names,
            "labs": labs}
    per_lab = replace(bundle, meta=dict(bundle.meta, shift_warning=card))
    crops = np.concatenate([lab_a[:3], lab_a[5:8]])  # six cells of lab a
    verdict = verdict_from_sums(per_lab, layer_sums(per_lab, crops[:2])
                                + layer_sums(per_lab, crops[2:]), 6)
    def score(c, layers, labs_used):
        means, _ = bn_input_moments(model, tensor(c), squares=False)
        mu, _ = moments_of([means[i] for i in layers], None)
        return shift_from_means(mu, [[r[i] for i in layers] for r in labs_used])

    want = score(crops, keep, refs.values())
    assert verdict.score == pytest.approx(want, rel=1e-6)
    # The nearest lab counts: lab a's own cells are nearer to a than to b.
    only_b = replace(bundle, meta=dict(bundle.meta,
                                       shift_warning=dict(card, labs={"b": labs["b"]})))
    assert shift_verdict(only_b, crops).score > verdict.score
    assert shift_verdict(per_lab, lab_a).score < shift_verdict(only_b, lab_a).score
    short = dict(card, labs={"a": {"mean": labs["a"]["mean"][:1], "var": labs["a"]["var"][:1]}})
    with pytest.raises(ValueError, match="do not fit"):
        shift_verdict(replace(bundle, meta=dict(bundle.meta, shift_warning=short)), crops)
    with pytest.raises(ValueError, match="carries no labs"):
        shift_verdict(replace(bundle, meta=dict(bundle.meta, shift_warning=dict(card, labs={}))),
                      crops)
    with pytest.raises(ValueError, match="unknown shift-score reference"):
        shift_verdict(replace(bundle, meta=dict(
            bundle.meta, shift_warning=dict(card, reference="nearest"))), crops)
    # write_card puts the labs in, with the command that chose them; a running-statistics
    # card is not the per-lab candidate of the same layers.
    weights = tmp_path / "m.safetensors"
    shutil.copy(WEIGHTS_DIR / "ddrnet_wbc8_v7.safetensors", weights)
    shutil.copy(WEIGHTS_DIR / "ddrnet_wbc8_v7.json", tmp_path / "m.json")
    payload = {"threshold": 0.1, "min_crops": 4, "margin": 1.2, "weights": "m",
               "calibration": ["pbc_val", "bccd_valfold"], "group": "stem",
               "layers": ["stem.norm"]}
    write_card(weights, payload, tmp_path / "p", ["all", "stem"], ["mean"], "five",
               {k: {"mean": v["mean"][:1], "var": v["var"][:1]} for k, v in labs.items()},
               "shifted")
    entry = json.loads((tmp_path / "m.json").read_text())["shift_warning"]
    assert entry["reference"] == "per-lab" and set(entry["labs"]) == {"a", "b"}
    assert "--reference per-lab" in entry["benchmark"] and "--kaggle shifted" in entry["benchmark"]
    assert "domain_shift_m_per-lab_layers_kaggle-shifted.json" in entry["benchmark"]
    written = load_bundle(weights)
    assert shift_verdict(written, crops).score == pytest.approx(
        score(crops, [0], refs.values()), rel=1e-6)
    groups = {"stem": {"group": "stem", "statistic": "mean", "layers": ["stem.norm"]}}
    assert card_candidate(bundle.meta["shift_warning"], groups, "per-lab") is None
    assert card_candidate(entry, groups, "per-lab") == "stem"


def test_shift_gate_rows_add_up_to_the_plugins_sums():
    """``benchmarks.shift_gate`` judges a draw by adding per-crop rows (:func:`crop_rows`):
    a subset's rows must add up to what the plugin sends for those crops alone
    (:func:`layer_sums`), so the gate reads the card exactly as ``count`` does."""
    from napari_ddrnet.classify import Classifier
    from napari_ddrnet.shift_score import crop_rows, layer_sums

    clf = Classifier(WEIGHTS_DIR / "ddrnet_wbc8_v7.safetensors", device="cpu", tta=False)
    crops = np.random.default_rng(7).integers(0, 256, (9, 96, 96, 3), dtype=np.uint8)
    rows = crop_rows(clf.bundle, crops)
    assert rows.shape == (9, 768)
    np.testing.assert_allclose(rows[[1, 4, 8]].sum(0).numpy(),
                               layer_sums(clf.bundle, crops[[1, 4, 8]]), rtol=1e-6)


def test_shift_gate_session_pools_images_as_the_widget_does():
    """A simulated widget session judges each image with the ones just before it until 32
    cells: no verdict before 32 cells, a warning as soon as one pooled verdict is above the
    threshold."""
    from dataclasses import replace

    from benchmarks.shift_gate import session_warns
    from napari_ddrnet.classify import Classifier
    from napari_ddrnet.shift_score import crop_rows

    clf = Classifier(WEIGHTS_DIR / "ddrnet_wbc8_v7.safetensors", device="cpu", tta=False)
    crops = np.random.default_rng(8).integers(0, 256, (40, 96, 96, 3), dtype=np.uint8)
    rows = crop_rows(clf.bundle, crops)
    image = np.repeat(np.arange(10), 4)  # 10 images of 4 cells: verdicts from the 8th on

    def bundle(threshold):
        card = dict(clf.bundle.meta["shift_warning"], threshold=threshold)
        return replace(clf.bundle, meta=dict(clf.bundle.meta, shift_warning=card))

    rng = np.random.default_rng(0)
    assert session_warns(bundle(0.0), rows, image, rng)
    assert not session_warns(bundle(1e9), rows, image, rng)
    assert not session_warns(bundle(0.0), rows, image, rng, n_images=7)  # 28 cells: none
