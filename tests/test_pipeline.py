"""analyze(): classification, unidentified threshold, tiling equivalence, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ddrnet.classes import PBC_CLASSES, WBC_CLASSES
from napari_ddrnet.image_input import ImageInputError, to_rgb_uint8
from napari_ddrnet.pipeline import analyze, count_steps
from napari_ddrnet.synthetic import synthetic_smear


def test_analyze_sample(smear, classifier):
    image, truth = smear
    res = analyze(image, 0.1, classifier)
    assert len(res.cells) == len(truth)
    assert res.classes == PBC_CLASSES
    probs = res.cells[[f"prob_{c}" for c in PBC_CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    assert (res.cells["confidence"] == probs.max(1)).all()
    assert res.counts["count"].sum() == len(truth)
    wbc = res.counts[res.counts["class"].isin(WBC_CLASSES)]
    if wbc["count"].sum():
        assert wbc["percent"].sum() == pytest.approx(100.0)
    # The lymphocyte is the clearest synthetic cell: small round nucleus filling the cell.
    lym = truth[truth["kind"] == "lymphocyte"].iloc[0]
    d = np.hypot(res.cells["centroid_row"] - lym["centroid_row"],
                 res.cells["centroid_col"] - lym["centroid_col"])
    assert res.cells.loc[d.idxmin(), "class"] == "lymphocyte"


def test_min_confidence_makes_cells_unidentified(smear, classifier):
    image, _ = smear
    res = analyze(image, 0.1, classifier, min_confidence=1.0)
    assert set(res.cells["class"]) == {"unidentified"}
    row = res.counts.set_index("class").loc["unidentified"]
    assert row["count"] == len(res.cells) and row["percent"] == pytest.approx(100.0)


def test_tiled_run_matches_untiled(classifier):
    kinds = ("neutrophil", "lymphocyte", "monocyte", "eosinophil") * 3
    image, truth = synthetic_smear((1400, 1700), 0.1, wbc_kinds=kinds, seed=3)
    full = analyze(image, 0.1, classifier)
    steps = []
    tiled = analyze(image, 0.1, classifier, tile_size=450,
                    progress=lambda d, t: steps.append((d, t)))
    assert steps[-1] == (count_steps(image, 450), count_steps(image, 450)) and len(steps) > 5
    assert len(full.cells) == len(tiled.cells) == len(truth)
    a = full.cells.sort_values(["centroid_row", "centroid_col"]).reset_index(drop=True)
    b = tiled.cells.sort_values(["centroid_row", "centroid_col"]).reset_index(drop=True)
    np.testing.assert_allclose(a[["centroid_row", "centroid_col"]],
                               b[["centroid_row", "centroid_col"]], atol=2.0)
    assert (a["class"] == b["class"]).mean() >= 0.9
    fa, fb = full.labels > 0, tiled.labels > 0
    assert (fa != fb).sum() / fa.sum() < 0.03
    assert len(np.unique(tiled.labels)) - 1 == len(tiled.cells)


def test_lazy_dask_image_is_tiled(classifier, smear):
    da = pytest.importorskip("dask.array")
    image, truth = smear
    res = analyze(da.from_array(image, chunks=(256, 256, 3)), 0.1, classifier)
    assert len(res.cells) == len(truth)


@pytest.mark.parametrize("kind", ["rgba", "uint16", "float", "chw"])
def test_other_pixel_types_are_converted(kind, smear, classifier):
    image, truth = smear
    if kind == "rgba":
        img = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
    elif kind == "uint16":
        img = image.astype(np.uint16) * 257
    elif kind == "float":
        img = image.astype(np.float32) / 255
    else:
        img = np.moveaxis(image, -1, 0)
    conv = to_rgb_uint8(img)
    if kind == "uint16":  # scaled by its range: a 12-bit camera is not 1/16 as bright
        expect = np.round(image.astype(float) * 255 / image.max())
        np.testing.assert_allclose(conv, expect, atol=1)
    else:
        np.testing.assert_array_equal(conv, image)
    res = analyze(img, 0.1, classifier)
    assert len(res.cells) == len(truth) and res.labels.shape == image.shape[:2]


def test_bad_images_raise_clear_errors(classifier):
    with pytest.raises(ImageInputError, match="grayscale"):
        analyze(np.zeros((100, 100), np.uint8), 0.1, classifier)
    with pytest.raises(ImageInputError, match="too small"):
        to_rgb_uint8(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ImageInputError, match="NaN"):
        to_rgb_uint8(np.full((32, 32, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="positive"):
        analyze(np.zeros((64, 64, 3), np.uint8), -1.0, classifier)


def test_grey_image_saved_as_rgb_is_an_error_not_zero_cells(classifier, smear, tmp_path):
    """A grayscale picture stored with three equal channels passes the shape check; it used to
    give 0 cells without a word. Field and single-cell paths say why."""
    from PIL import Image

    from napari_ddrnet import analyze_single_cell

    image, _ = smear
    grey = np.asarray(Image.fromarray(image).convert("L").convert("RGB"))
    with pytest.raises(ImageInputError, match="no colour"):
        analyze(grey, 0.1, classifier)
    with pytest.raises(ImageInputError, match="no colour"):
        analyze_single_cell(grey[:200, :200], None, classifier)
    jpeg = tmp_path / "grey.jpg"  # JPEG's chroma noise does not make it colour
    Image.fromarray(grey).save(jpeg, quality=75)
    with pytest.raises(ImageInputError, match="no colour"):
        analyze(np.asarray(Image.open(jpeg).convert("RGB")), 0.1, classifier)
    assert len(analyze(image, 0.1, classifier).cells) > 0  # the colour original is fine


def test_sparse_stain_on_shaded_glass_is_not_called_grey(classifier, smear):
    """Only (nearly) colourless images are refused: one stained cell on a large field of
    vignetted glass still counts as colour, a vignetted blank field stays an empty result, and
    a slide is not judged on sampled windows that may all be glass."""
    da = pytest.importorskip("dask.array")
    image, truth = smear
    side = 2400
    yy, xx = np.mgrid[:side, :side]
    glass = 235 - 60 * (((yy - side / 2) ** 2 + (xx - side / 2) ** 2) / (side / 2) ** 2)
    glass = np.repeat(glass.clip(0, 255)[..., None], 3, axis=2).astype(np.uint8)
    assert len(analyze(glass, 0.1, classifier).cells) == 0  # blank, shaded: empty, no error
    r, c = int(truth["centroid_row"][0]), int(truth["centroid_col"][0])
    cell = image[max(r - 60, 0):r + 60, max(c - 60, 0):c + 60]
    sparse = glass.copy()
    sparse[1000:1000 + cell.shape[0], 1000:1000 + cell.shape[1]] = cell
    assert len(analyze(sparse, 0.1, classifier, return_labels=False).cells) >= 1
    slide = np.tile(glass[:1024, :1024], (4, 4, 1))
    slide[2000:2000 + cell.shape[0], 2000:2000 + cell.shape[1]] = cell
    lazy = da.from_array(slide, chunks=(1024, 1024, 3))
    assert len(analyze(lazy, 0.1, classifier, tile_size=1024, return_labels=False).cells) >= 1


@pytest.mark.parametrize("dataset, pattern", [
    ("bccd", "bccd/images/*.jpg"), ("lisc", "lisc/*/*.jpg"), ("pbc", "pbc/*/*.jpg"),
    ("txlpbc_train", "txlpbc_train/images/*.jpg"),
    ("kaggle_blood_cells", "kaggle_blood_cells/TEST/*/*.jpeg")])
def test_real_smears_have_colour(dataset, pattern):
    """The colourless rule leaves stained images of every source alone (20 per source)."""
    import glob

    from PIL import Image

    from napari_ddrnet.image_input import check_has_colour
    from training.paths import data_root, has_dataset

    if not has_dataset(dataset):
        pytest.skip(f"dataset '{dataset}' not found under {data_root()}")
    files = sorted(glob.glob(str(data_root() / pattern)))[:20]
    assert len(files) == 20
    for f in files:
        check_has_colour(np.asarray(Image.open(f).convert("RGB")))


def test_analyze_names_its_own_options(classifier, smear):
    image, _ = smear
    with pytest.raises(TypeError, match=r"analyze\(\).*single_cell.*analyze_single_cell"):
        analyze(image, 0.1, classifier, single_cell=True)
    with pytest.raises(TypeError, match=r"analyze\(\) got unknown option\(s\) tiles"):
        analyze(image, 0.1, classifier, tiles=4)


def test_empty_field_gives_empty_result(classifier):
    res = analyze(np.full((300, 400, 3), 225, np.uint8), None, classifier)
    assert len(res.cells) == 0 and res.counts["count"].sum() == 0
    assert res.labels.shape == (300, 400) and res.labels.max() == 0
    assert res.counts["percent"].isna().all()


def test_lazy_16bit_tiles_share_one_scaling(classifier, smear):
    """Each tile of a lazy 16-bit image must be scaled by the image's range, not its own: a
    tile without the brightest pixels would otherwise come out brighter."""
    da = pytest.importorskip("dask.array")
    image, truth = smear
    img16 = image.astype(np.uint16) * 16  # a 12-bit camera
    img16[:8, :8] = 4095  # the brightest pixels sit in one tile only
    eager = analyze(img16, 0.1, classifier, tile_size=256, return_labels=False)
    lazy = analyze(da.from_array(img16, chunks=(256, 256, 3)), 0.1, classifier,
                   tile_size=256, return_labels=False)
    assert len(lazy.cells) == len(eager.cells) == len(truth)
    np.testing.assert_allclose(lazy.cells["confidence"], eager.cells["confidence"], atol=1e-4)


def test_implausible_pixel_size_is_refused(classifier, smear):
    from napari_ddrnet.scale import PixelSizeError

    image, _ = smear
    for px in (50.0, 21.2):  # a typo, a 1200 dpi tag read as a calibration
        with pytest.raises(PixelSizeError, match="µm"):
            analyze(image, px, classifier)
    # A file calibration out of range is ignored (with a note), not fatal.
    res = analyze(image, None, classifier, pixel_size_metadata=21.2, return_labels=False)
    assert res.pixel_size_source != "metadata" and res.pixel_size.note


def test_pixel_size_sources_are_reported(classifier, smear):
    image, _ = smear
    assert analyze(image, 0.1, classifier).pixel_size_source == "given"
    res = analyze(image, None, classifier, pixel_size_metadata=0.1)
    assert res.pixel_size_source == "metadata" and res.pixel_size_um == pytest.approx(0.1)
    res = analyze(image, None, classifier)
    assert res.pixel_size_source == "estimated"
    assert res.pixel_size_um == pytest.approx(0.1, rel=0.1)
    blank = np.full((300, 400, 3), 225, np.uint8)  # no red cells to measure
    res = analyze(blank, None, classifier)
    assert res.pixel_size_source == "default" and res.pixel_size.note


def test_crops_follow_the_weights_card(classifier, smear, tmp_path, monkeypatch):
    """A model trained at another field of view / input size gets crops cut its way."""
    import json
    import shutil

    from napari_ddrnet.classify import Classifier
    from napari_ddrnet.weights import DEFAULT_WEIGHTS, metadata_path

    w = tmp_path / "wide.safetensors"
    shutil.copy(DEFAULT_WEIGHTS, w)
    meta = json.loads(metadata_path(DEFAULT_WEIGHTS).read_text())
    meta.update(crop_fov_um=45.0, input_size=64)  # the default is 38 µm at 112 px
    metadata_path(w).write_text(json.dumps(meta))
    wide = Classifier(w, device="cpu")
    assert (wide.crop_fov_um, wide.input_size) == (45.0, 64)
    seen = []
    real = Classifier.predict_proba
    monkeypatch.setattr(Classifier, "predict_proba",
                        lambda self, crops: seen.append(crops) or real(self, crops))
    image, truth = smear
    analyze(image, 0.1, wide, return_labels=False)
    analyze(image, 0.1, classifier, return_labels=False)
    assert seen[0].shape[1:] == (64, 64, 3) and seen[1].shape[1:] == (112, 112, 3)
    # 45 µm instead of 38 µm: the cell fills less of the crop, so its border is background.
    border = lambda c: c[:, :4].astype(float).mean()  # noqa: E731
    assert border(seen[0]) > border(seen[1])


def test_value_range_never_leaves_a_tile_to_its_own_range():
    from napari_ddrnet.image_input import value_range

    dim16 = np.full((32, 32, 3), 200, np.uint16)  # a dark 16-bit sample stays on 0..255
    assert value_range([dim16]) == (0.0, 255.0)
    assert value_range([np.full((32, 32, 3), 0.5, np.float32)]) == (0.0, 1.0)
    assert value_range([np.full((32, 32, 3), 9, np.uint8)]) is None
    assert value_range([np.array([[[0, 10, 4095]]], np.uint16)]) == (0.0, 4095.0)


def test_labels_written_into_a_zarr_store_match_in_memory(classifier, smear, tmp_path):
    """A whole slide's labels go into a chunked on-disk array, tile by tile, identical to the
    in-memory label image of the same tiled run."""
    zarr = pytest.importorskip("zarr")
    image, truth = smear
    mem = analyze(image, 0.1, classifier, tile_size=256)
    store = zarr.open(str(tmp_path / "labels.zarr"), mode="w", shape=image.shape[:2],
                      chunks=(128, 128), dtype=np.int32)
    disk = analyze(image, 0.1, classifier, tile_size=256, labels_out=store)
    assert disk.labels is store and len(disk.cells) == len(truth)
    np.testing.assert_array_equal(np.asarray(store[:]), mem.labels)
    with pytest.raises(ValueError, match="labels_out"):
        analyze(image, 0.1, classifier, labels_out=np.zeros((5, 5), np.int32))
