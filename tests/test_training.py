"""A short real training run on a small PBC subset must clearly beat chance."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import needs_data
from skimage import io

from napari_ddrnet.crop import crop_centre
from training.augment import AugmentConfig, augment_batch
from training.packs import encode_jpeg, load_pack, save_pack
from training.paths import data_root

CLASSES = ["eosinophil", "lymphocyte", "neutrophil", "platelet"]


def _make_packs(tmp_path, n_train=80, n_val=30):
    root = data_root() / "pbc"
    rows = list(csv.DictReader(open(root / "splits.csv", newline="")))
    for split, n in (("train", n_train), ("val", n_val)):
        crops, labels, names = [], [], []
        for k, cls in enumerate(CLASSES):
            sel = [r for r in rows if r["split"] == split and r["class"] == cls][:n]
            for r in sel:
                crops.append(encode_jpeg(crop_centre(io.imread(root / r["file"])[..., :3])))
                labels.append(k)
                names.append(r["file"])
        save_pack(tmp_path / f"small_{split}.npz", crops, labels, CLASSES, names)


def test_pack_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    save_pack(tmp_path / "p.npz", [encode_jpeg(c, 95) for c in crops], [0, 1, 1], ["a", "b"],
              ["x", "y", "z"])
    x, y, classes, names = load_pack(tmp_path / "p.npz")
    assert x.shape == (3, 64, 64, 3) and y.tolist() == [0, 1, 1] and classes == ["a", "b"]


def test_augmentation_keeps_shape_and_range():
    import torch

    x = torch.rand(8, 3, 64, 64)
    y = augment_batch(x.clone(), AugmentConfig(stain_jitter=0.1, brightness=0.1))
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert not torch.allclose(x, y)


@needs_data("pbc")
def test_short_training_beats_chance_and_resumes(tmp_path):
    from training.evaluate import evaluate_run
    from training.train import train

    _make_packs(tmp_path)
    cfg = {"arch": "ddrnet", "ddrnet": {"norm": "batch"}, "train": ["small_train"],
           "val": ["small_val"], "epochs": 6, "batch_size": 32, "lr": 0.003,
           "augment": {}, "seed": 0}
    run = tmp_path / "run"
    summary = train(cfg, run, tmp_path, "cpu", quiet=True)
    assert summary["best_val_macro_f1"] > 0.5  # chance is 0.25 for 4 balanced classes
    res = evaluate_run(run, tmp_path, ["small_val"], "cpu")["small_val"]
    assert res["accuracy"] > 0.55, res
    for f in ("eval.json", "eval.md", "confusion_small_val.png", "confusion_small_val.csv"):
        assert (run / f).exists()
    # Resume continues from the checkpoint instead of starting over.
    cfg["epochs"] = 7
    summary2 = train(cfg, run, tmp_path, "cpu", resume=True, quiet=True)
    assert [h["epoch"] for h in summary2["history"]] == [7]
    assert json.loads((run / "summary.json").read_text())["epochs"] == 7


@pytest.mark.parametrize("arch", ["resnet18"])
def test_baselines_build(arch):
    import torch

    from training.models import build_model

    m = build_model(arch, 4).eval()
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 4)


@needs_data("pbc")
def test_torchrun_ddp_on_cpu(tmp_path):
    """Two processes with DistributedDataParallel (gloo on the CPU) train and checkpoint."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    _make_packs(tmp_path, n_train=16, n_val=8)
    cfg = {"arch": "ddrnet", "ddrnet": {"norm": "batch"}, "train": ["small_train"],
           "val": ["small_val"], "epochs": 1, "batch_size": 16, "augment": {}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "-m", "training.train", "--config", str(tmp_path / "cfg.json"),
                          "--packs", str(tmp_path), "--out", str(tmp_path / "ddp"),
                          "--device", "cpu"], cwd=root, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and (tmp_path / "ddp" / "best.pt").exists()


def test_split_pack_is_deterministic_and_disjoint(tmp_path):
    from training.packs import split_pack

    rng = np.random.default_rng(1)
    crops = [encode_jpeg(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(12)]
    names = [f"f{i:02d}" for i in range(12)][::-1]
    save_pack(tmp_path / "p.npz", crops, [i % 2 for i in range(12)], ["a", "b"], names)
    assert split_pack(tmp_path / "p.npz", tmp_path / "a.npz", tmp_path / "b.npz", every=4) == (9, 3)
    _, _, _, na = load_pack(tmp_path / "a.npz")
    _, _, _, nb = load_pack(tmp_path / "b.npz")
    assert sorted(nb) == ["f00", "f04", "f08"] and not set(na) & set(nb)


def test_hed_jitter_changes_stain_not_structure():
    import torch

    x = torch.rand(6, 3, 32, 32) * 0.5 + 0.4
    still = dict(flip=False, rot90=False, max_rotation_deg=0, zoom=(1, 1), max_shift=0,
                 contrast=(1, 1))
    y = augment_batch(x.clone(), AugmentConfig(hed_jitter=0.05, **still))
    assert 0.003 < float((y - x).abs().mean()) < 0.1
    # A per-sample colour transform: pixel order within each image is preserved.
    for i in range(len(x)):
        c = np.corrcoef(x[i, 0].flatten().numpy(), y[i, 0].flatten().numpy())[0, 1]
        assert c > 0.9


@needs_data("pbc")
def test_fine_tune_from_weights_with_two_validation_packs(tmp_path):
    from napari_ddrnet.weights import DEFAULT_WEIGHTS
    from training.train import train

    _make_packs(tmp_path, n_train=10, n_val=10)
    import shutil

    shutil.copy(tmp_path / "small_val.npz", tmp_path / "second_val.npz")
    cfg = {"arch": "ddrnet", "ddrnet": {"norm": "batch"}, "train": ["small_train"],
           "val": ["small_val", "second_val"], "epochs": 1, "batch_size": 16,
           "init": str(DEFAULT_WEIGHTS), "augment": {"hed_jitter": 0.05}}
    # The shipped model has 8 classes, the small packs 4 of them: the head starts from the
    # shipped head's rows of those 4, matched by name ...
    summary = train(cfg, tmp_path / "mapped", tmp_path, "cpu", quiet=True)
    assert summary["classes"] == CLASSES
    # ... a class the weights never saw fails loudly instead of getting a random row ...
    import torch
    from safetensors.torch import load_file

    from training.models import build_model
    from training.train import load_init

    src = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())["classes"]
    model = build_model("ddrnet", 4, {"norm": "batch"})
    load_init(model, DEFAULT_WEIGHTS, CLASSES)
    shipped = load_file(str(DEFAULT_WEIGHTS))
    rows = [src.index(c) for c in CLASSES]
    assert torch.equal(model.state_dict()["fc.weight"], shipped["fc.weight"][rows])
    assert torch.equal(model.state_dict()["fc.bias"], shipped["fc.bias"][rows])
    assert torch.equal(model.state_dict()["stem.conv.weight"], shipped["stem.conv.weight"])
    with pytest.raises(ValueError, match="smudge"):
        load_init(build_model("ddrnet", 4, {"norm": "batch"}), DEFAULT_WEIGHTS,
                  ["eosinophil", "lymphocyte", "smudge", "platelet"])
    # ... and a matching architecture (a 4-class run's own checkpoint) loads as it is.
    cfg0 = dict(cfg, init=None)
    train(cfg0, tmp_path / "r0", tmp_path, "cpu", quiet=True)
    summary = train(dict(cfg, init=str(tmp_path / "r0" / "best.pt")), tmp_path / "r1",
                    tmp_path, "cpu", quiet=True)
    rec = summary["history"][0]
    assert {"val_macro_f1_small_val", "val_macro_f1_second_val"} <= set(rec)
    assert rec["val_macro_f1"] == pytest.approx(
        (rec["val_macro_f1_small_val"] + rec["val_macro_f1_second_val"]) / 2)


# --- Strong augmentation: every transform keeps shape/dtype/range, is the identity at strength
# 0, and changes the image by the intended amount. -------------------------------------------

_STILL = dict(flip=False, rot90=False, max_rotation_deg=0, zoom=(1, 1), max_shift=0,
              contrast=(1, 1))
_TRANSFORMS = {"white_balance": 0.15, "hue": 0.05, "saturation": 0.3, "gamma": 0.3,
               "blur_p": 1.0, "noise": 0.05, "jpeg_p": 1.0, "hed_jitter": 0.08,
               "stain_jitter": 0.08, "brightness": 0.08}


def _smooth_batch(n=8, s=64, seed=0):
    """Images with structure at several scales (blur and JPEG must have something to act on)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, s // 8, s // 8, generator=g)
    x = torch.nn.functional.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
    return (0.15 + 0.7 * x + 0.05 * torch.rand(n, 3, s, s, generator=g)).clamp(0, 1)


def test_identity_when_every_strength_is_zero():
    import torch

    x = _smooth_batch()
    y = augment_batch(x.clone(), AugmentConfig(**_STILL))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.allclose(x, y, atol=1e-5)
    # blur_p / jpeg_p = 0 leave the strength parameters inert.
    y = augment_batch(x.clone(), AugmentConfig(blur_sigma=3.0, jpeg_quality=(5, 10), **_STILL))
    assert torch.allclose(x, y, atol=1e-5)


@pytest.mark.parametrize("name", sorted(_TRANSFORMS))
def test_each_transform_keeps_shape_dtype_range_and_changes_the_image(name):
    import torch

    x = _smooth_batch()
    y = augment_batch(x.clone(), AugmentConfig(**{name: _TRANSFORMS[name]}, **_STILL),
                      torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    diff = float((y - x).abs().mean())
    assert 1e-3 < diff < 0.2, (name, diff)


def test_white_balance_cast_is_bounded_and_keeps_brightness():
    import torch

    from training.augment import white_balance_gains

    u = torch.rand(1000, 3) * 2 - 1
    g = white_balance_gains(u, 0.1)
    # Geometric mean 1: a tint, not a brightness change; each gain within exp(±2 * 0.1).
    assert torch.allclose(g.log().mean(1), torch.zeros(1000), atol=1e-6)
    assert float(g.max()) <= np.exp(0.2) + 1e-6 and float(g.min()) >= np.exp(-0.2) - 1e-6
    # Applied to a grey image: channel ratios are exactly the gains.
    x = torch.full((4, 3, 16, 16), 0.5)
    y = augment_batch(x.clone(), AugmentConfig(white_balance=0.1, **_STILL),
                      torch.Generator().manual_seed(0))
    ratio = y.mean((2, 3)) / 0.5
    assert float((ratio.log().mean(1)).abs().max()) < 1e-4
    assert 0.01 < float((ratio - 1).abs().max()) <= np.exp(0.2) - 1 + 1e-4


def test_zoom_scales_a_cell_by_the_drawn_factor():
    import torch

    s = 64
    yy, xx = torch.meshgrid(torch.arange(s) - s / 2 + 0.5, torch.arange(s) - s / 2 + 0.5,
                            indexing="ij")
    disk = ((yy ** 2 + xx ** 2) < 12 ** 2).float()  # radius 12 px
    x = torch.ones(2, 3, s, s) - 0.8 * disk  # dark cell on white
    for z in (0.7, 1.3):
        cfg = AugmentConfig(**dict(_STILL, zoom=(z, z)), padding="reflection")
        y = augment_batch(x.clone(), cfg)
        area = float((y[0, 0] < 0.6).sum())
        assert area / float(disk.sum()) == pytest.approx(z ** 2, rel=0.08), z


def test_blur_sigma_matches_the_request():
    import torch

    from training.augment import gaussian_blur

    x = torch.zeros(2, 3, 33, 33)
    x[:, :, 16, 16] = 1
    y = gaussian_blur(x, torch.tensor([0.8, 1.5]))
    for i, sigma in enumerate((0.8, 1.5)):
        prof = y[i, 0, 16] / y[i, 0, 16].sum()
        t = torch.arange(33) - 16.0
        assert float((prof * t ** 2).sum().sqrt()) == pytest.approx(sigma, rel=0.05)
    assert torch.allclose(y.sum((2, 3)), torch.ones(2, 3), atol=1e-5)


def test_channel_swap_and_grey_keep_each_pixel_and_hit_the_requested_share():
    import torch

    x = _smooth_batch(n=400, s=16)
    g = torch.Generator().manual_seed(3)
    y = augment_batch(x.clone(), AugmentConfig(channel_swap_p=0.5, **_STILL), g)
    # Every pixel keeps its three values (up to the still pipeline's 1e-6 rounding), only
    # their order changes, one non-identity order per swapped sample.
    torch.testing.assert_close(y.sort(1).values, x.sort(1).values, atol=1e-5, rtol=0)
    same = (y - x[:, [0, 1, 2]]).abs().flatten(1).amax(1) < 1e-5
    assert 0.4 < 1 - float(same.float().mean()) < 0.6
    for i in torch.nonzero(~same).flatten()[:20].tolist():
        order = [int(((y[i, c:c + 1] - x[i]).abs().flatten(1).amax(1) < 1e-5).nonzero()[0])
                 for c in range(3)]
        assert sorted(order) == [0, 1, 2] and order != [0, 1, 2]
    y = augment_batch(x.clone(), AugmentConfig(grayscale_p=0.3, **_STILL), g)
    grey = (y[:, 0] == y[:, 1]).flatten(1).all(1) & (y[:, 1] == y[:, 2]).flatten(1).all(1)
    assert 0.2 < float(grey.float().mean()) < 0.4
    lum = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[grey]
    torch.testing.assert_close(y[:, 0][grey], lum, atol=1e-5, rtol=0)
    torch.testing.assert_close(y[~grey], x[~grey], atol=1e-5, rtol=0)


def test_lab_conversion_matches_skimage_and_round_trips():
    import warnings

    import torch
    from skimage.color import lab2rgb, rgb2lab

    from training.augment import lab_to_rgb, rgb_to_lab

    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lab = rgb_to_lab(x)
    np.testing.assert_allclose(lab.permute(0, 2, 3, 1).numpy(),
                               rgb2lab(x.permute(0, 2, 3, 1).numpy()), atol=1e-4)
    torch.testing.assert_close(lab_to_rgb(lab), x, atol=1e-5, rtol=0)
    # out of gamut, very dark and very yellow (negative Z): as skimage clips it
    odd = torch.tensor([[5.0, 0, 80], [20, -30, 90], [2, 60, 100]], dtype=torch.float64)
    odd = odd.T.reshape(1, 3, 3, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage warns about the clipping
        want = lab2rgb(odd[0].permute(1, 2, 0).numpy())
    np.testing.assert_allclose(lab_to_rgb(odd)[0].permute(1, 2, 0).numpy(), want, atol=1e-4)


def test_lab_style_gives_a_crop_a_bank_crops_statistics_at_the_requested_share():
    import torch

    from training.augment import lab_stats, rgb_to_lab, style_bank

    x = _smooth_batch(n=400, s=16)
    rng = np.random.default_rng(0)
    # Two "labs" of unequal size: a bluish and a pinkish palette, as uint8 crops.
    blue = (rng.random((5, 16, 16, 3)) * [60, 60, 120] + [90, 90, 120]).astype(np.uint8)
    pink = (rng.random((45, 16, 16, 3)) * [80, 50, 60] + [170, 110, 140]).astype(np.uint8)
    bank = style_bank([blue, pink])
    assert [tuple(b.shape) for b in bank] == [(5, 6), (45, 6)]
    y = augment_batch(x.clone(), AugmentConfig(lab_style_p=0.5, **_STILL),
                      torch.Generator().manual_seed(2), styles=bank)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    moved = (y - x).abs().flatten(1).amax(1) > 1e-4
    assert 0.4 < float(moved.float().mean()) < 0.6
    torch.testing.assert_close(y[~moved], x[~moved], atol=1e-5, rtol=0)
    # A moved crop carries one bank crop's LAB means and standard deviations (up to clipping
    # at the gamut edge) ...
    rows = torch.cat(bank)
    dist = torch.cdist(lab_stats(y[moved]), rows)
    assert float(dist.min(1).values.median()) < 1.0
    # ... the lab drawn first and uniformly: half the moved crops take the 5-crop lab's
    # palette (a crop drawn from the pooled bank would give it a tenth) ...
    share_blue = float((dist.argmin(1) < len(bank[0])).float().mean())
    assert 0.35 < share_blue < 0.65
    # ... and keeps its structure: its lightness stays correlated with the original's.
    a, b = rgb_to_lab(x[moved])[:, 0].flatten(1), rgb_to_lab(y[moved])[:, 0].flatten(1)
    corr = torch.nn.functional.cosine_similarity(a - a.mean(1, keepdim=True),
                                                 b - b.mean(1, keepdim=True))
    assert float(corr.median()) > 0.9
    with pytest.raises(ValueError, match="style bank"):
        augment_batch(x.clone(), AugmentConfig(lab_style_p=0.5, **_STILL))


def test_style_groups_are_read_by_name_prefix(tmp_path):
    from training.train import load_style_groups

    crop = encode_jpeg(np.full((8, 8, 3), 128, np.uint8))
    save_pack(tmp_path / "mix.npz", [crop] * 3, [0, 1, 0], ["a", "b"],
              ["raabin/1.jpg", "bcd/2.jpg", "raabin/3.jpg"])
    groups = load_style_groups(tmp_path, [["mix", "raabin/"], ["mix", "bcd/"], ["mix", ""]])
    assert [len(g) for g in groups] == [2, 1, 3]
    with pytest.raises(ValueError, match="starts with 'lisc/'"):
        load_style_groups(tmp_path, [["mix", "lisc/"]])


def test_load_split_fraction_keeps_a_fixed_subset(tmp_path):
    from training.train import load_split

    rng = np.random.default_rng(0)
    crops = [encode_jpeg(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(20)]
    save_pack(tmp_path / "p.npz", crops, [i % 2 for i in range(20)], ["a", "b"],
              [str(i) for i in range(20)])
    x1, y1, _ = load_split(tmp_path, [["p", 0.25], ["p", 2]], seed=3)
    x2, _, _ = load_split(tmp_path, [["p", 0.25]], seed=3)
    assert len(y1) == 5 + 40 and np.array_equal(x1[:5], x2)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ddp_shards_are_disjoint_and_cover_the_epoch(world):
    """Issue 9 item 6: every rank draws the same permutation and takes its own stride."""
    from training.train import epoch_shard

    n = 1003
    for epoch in (0, 5):
        shards = [epoch_shard(n, seed=7, epoch=epoch, rank=r, world=world).tolist()
                  for r in range(world)]
        flat = [i for s in shards for i in s]
        assert len(flat) == n and sorted(flat) == list(range(n))  # disjoint and complete
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    # Different epochs shuffle differently; the same epoch reproduces (resume).
    assert epoch_shard(n, 7, 0).tolist() != epoch_shard(n, 7, 1).tolist()
    assert epoch_shard(n, 7, 1).tolist() == epoch_shard(n, 7, 1).tolist()


def test_export_takes_metrics_from_machine_output_only(tmp_path):
    """Issue 9 item 7: the card's selection epoch comes from the log; typed metrics are refused."""
    from pathlib import Path

    from training.export import benchmark_metrics, export_run, selected_epoch

    root = Path(__file__).resolve().parents[1]
    summary = json.loads((root / "docs/results/pbc8_ddrnet_e60/summary.json").read_text())
    sel = selected_epoch(summary)
    assert sel["epoch"] == 22 and sel["val_macro_f1"] == pytest.approx(0.9459, abs=1e-4)
    with pytest.raises(ValueError, match="metrics"):
        export_run(tmp_path, tmp_path / "w.safetensors", {"metrics_with_tta": {}})
    bench = {"lisc_side_px": 200, "results": {"lisc": {"tta": {
        "n": 10, "accuracy_plain": 0.5, "accuracy_restricted": 0.6, "macro_f1": 0.55}}},
        "bccd_fields": {"tta": {"n": 69, "accuracy": 0.8}}}
    m = benchmark_metrics(bench)
    assert m["lisc"]["tta"] == {"n": 10, "accuracy": 0.6, "macro_f1": 0.55,
                                "accuracy_plain_argmax": 0.5}
    assert m["bccd_test_fields_end_to_end"]["tta"]["accuracy"] == 0.8


def test_wise_interpolation_is_linear_and_keeps_integer_buffers():
    import torch

    from training.wise import interpolate

    a = {"w": torch.zeros(3), "n": torch.tensor(5)}
    b = {"w": torch.ones(3) * 2, "n": torch.tensor(9)}
    m = interpolate(a, b, 0.25)
    assert torch.allclose(m["w"], torch.full((3,), 0.5)) and int(m["n"]) == 9
    assert torch.equal(interpolate(a, b, 0.0)["w"], a["w"])
    with pytest.raises(ValueError):
        interpolate(a, {"w": b["w"]}, 0.5)


def test_soup_averages_floats_and_refuses_mismatched_models():
    import torch

    from training.soup import average

    a = {"w": torch.zeros(2, 2), "n": torch.tensor(3)}
    b = {"w": torch.ones(2, 2) * 3, "n": torch.tensor(7)}
    c = {"w": torch.full((2, 2), 6.0), "n": torch.tensor(9)}
    m = average([a, b, c])
    assert torch.allclose(m["w"], torch.full((2, 2), 3.0)) and int(m["n"]) == 3
    with pytest.raises(ValueError):
        average([a])
    with pytest.raises(ValueError):
        average([a, {"w": torch.zeros(2, 3), "n": torch.tensor(1)}])


def test_expected_calibration_error_matches_its_definition():
    """torchmetrics' ECE, checked by hand on two bins: confidences 0.9 (2 cells, 1 right) and
    0.6 (2 cells, both right) give 0.5 * |0.5 - 0.9| + 0.5 * |1.0 - 0.6| = 0.4."""
    from training.evaluate import expected_calibration_error

    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]], np.float32)
    y = np.array([0, 1, 1, 1])
    assert expected_calibration_error(probs, y) == pytest.approx(0.4, abs=1e-6)
    assert expected_calibration_error(np.eye(3, dtype=np.float32), np.arange(3)) == 0.0


def test_paper_optimizer_and_constant_schedule():
    import torch

    from training.train import make_optimizer

    model = torch.nn.Linear(4, 2)
    adam = make_optimizer(model, {"optimizer": "adam", "lr": 0.01})
    assert type(adam) is torch.optim.Adam and adam.defaults["weight_decay"] == 0.0
    ours = make_optimizer(model, {})
    assert type(ours) is torch.optim.AdamW and ours.defaults["weight_decay"] == 0.05
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(model, {"optimizer": "sgd"})


@needs_data("kaggle_blood_cells")
def test_kaggle_fields_are_packed_whole_at_224(tmp_path):
    from io import BytesIO

    from PIL import Image

    from training.prepare import FIELD_SIDE, _kaggle_field_item

    path = sorted((data_root() / "kaggle_blood_cells" / "TEST" / "NEUTROPHIL").glob("*.jpeg"))[0]
    field = io.imread(path)[..., :3]
    packed = np.asarray(Image.open(BytesIO(_kaggle_field_item(str(path)))))
    assert packed.shape == (FIELD_SIDE, FIELD_SIDE, 3)
    # The whole 4:3 field squeezed to a square (no crop): the mean colour is kept.
    assert np.abs(packed.mean((0, 1)) - field.mean((0, 1))).max() < 3.0


def test_recalibrate_a_snapshot_resets_batchnorm_statistics(tmp_path):
    """A snapshot of a run still training (no summary.json) is recalibrated in small chunks:
    the BatchNorm running statistics become those of the given crops, the weights stay."""
    import torch

    from training import recalibrate
    from training.models import build_model

    rng = np.random.default_rng(0)
    crops = [encode_jpeg(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(24)]
    save_pack(tmp_path / "tiny.npz", crops, [0, 1] * 12, ["a", "b"], [str(i) for i in range(24)])
    run = tmp_path / "snap"
    run.mkdir()
    model = build_model("ddrnet", 2, {"norm": "batch"})
    torch.save(model.state_dict(), run / "best.pt")
    (run / "meta.json").write_text(json.dumps({"arch": "ddrnet", "classes": ["a", "b"],
                                               "ddrnet": {"norm": "batch"}}))
    recalibrate.main(["--run", str(run), "--packs", str(tmp_path), "--packs-train", "tiny",
                      "--batch-size", "8", "--out", str(tmp_path / "recal")])
    before = torch.load(run / "best.pt", weights_only=True)
    after = torch.load(tmp_path / "recal" / "best.pt", weights_only=True)
    means = [k for k in before if k.endswith("running_mean")]
    assert means and all(not torch.equal(before[k], after[k]) for k in means)
    weights = [k for k in before if k.endswith("weight")]
    assert all(torch.equal(before[k], after[k]) for k in weights)
    assert json.loads((tmp_path / "recal" / "summary.json").read_text())[
        "recalibration"]["n_crops"] == 24


@needs_data("kaggle_blood_cells")
def test_reencoded_pack_is_smaller_and_keeps_items(tmp_path):
    """WebP copies of 224 px fields (what a GPU call carries): same labels, names and shapes,
    a fraction of the bytes, pixels within a few grey levels."""
    from training.packs import main as packs_main
    from training.prepare import _kaggle_field_item

    paths = sorted((data_root() / "kaggle_blood_cells" / "TEST" / "EOSINOPHIL").glob("*.jpeg"))
    items = [_kaggle_field_item(str(p)) for p in paths[:6]]
    save_pack(tmp_path / "f.npz", items, [0, 1, 2, 3, 0, 1], ["a", "b", "c", "d"],
              [p.name for p in paths[:6]])
    packs_main(["reencode", str(tmp_path / "f.npz"), str(tmp_path / "w.npz")])
    x0, y0, c0, n0 = load_pack(tmp_path / "f.npz")
    x1, y1, c1, n1 = load_pack(tmp_path / "w.npz")
    assert (y1.tolist(), c1, n1) == (y0.tolist(), c0, n0) and x1.shape == x0.shape
    assert (tmp_path / "w.npz").stat().st_size < 0.5 * (tmp_path / "f.npz").stat().st_size
    assert np.abs(x1.astype(int) - x0).mean() < 4


def test_run_shorter_than_its_selection_start_still_saves_a_model(tmp_path):
    """``--epochs 1`` on a config that selects from epoch 3 on selects its last epoch rather
    than ending with no best.pt."""
    from training.train import train

    rng = np.random.default_rng(0)
    for name in ("tr", "va"):
        crops = [encode_jpeg(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
                 for _ in range(16)]
        save_pack(tmp_path / f"{name}.npz", crops, [0, 1] * 8, ["a", "b"],
                  [str(i) for i in range(16)])
    cfg = {"arch": "ddrnet", "train": ["tr"], "val": ["va"], "epochs": 1, "batch_size": 8,
           "select_after_epoch": 3, "augment": {}}
    train(cfg, tmp_path / "run", tmp_path, "cpu", quiet=True)
    assert (tmp_path / "run" / "best.pt").exists() and (tmp_path / "run" / "meta.json").exists()


def test_lossless_packs_store_crops_exactly_and_never_mix_codecs(tmp_path, monkeypatch, capsys):
    """``--lossless`` pack folders hold PNG crops, bit for bit what the plugin cuts; JPEG ones
    do not; the codec is recorded in ``cut.json`` and one folder never mixes the two."""
    from training.packs import LOSSLESS_ENV, encode_crop, write_cut

    monkeypatch.setenv(LOSSLESS_ENV, "0")  # restored after the test, whatever write_cut sets
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (4, 112, 112, 3), dtype=np.uint8)
    for lossless in (True, False):
        packs = tmp_path / f"packs_{lossless}"
        write_cut(packs, 38.0, 112, lossless=lossless)
        assert json.loads((packs / "cut.json").read_text()).get("lossless", False) == lossless
        save_pack(packs / "p.npz", [encode_crop(c) for c in crops], [0, 1, 0, 1], ["a", "b"],
                  list("wxyz"))
        x, *_ = load_pack(packs / "p.npz")
        assert x.shape == crops.shape and bool((x == crops).all()) == lossless
        with pytest.raises(SystemExit, match="lossless"):
            write_cut(packs, 38.0, 112, lossless=not lossless)
        # pseudo-labels never go into a folder of the other codec (refused before any work)
        from training.pseudo_label import main as pseudo_main

        flag = [] if lossless else ["--lossless"]
        with pytest.raises(SystemExit):
            pseudo_main(["--teacher", "unused.safetensors", "--out", str(packs / "p9.npz"),
                         *flag])
        # the guard's own message, not just the usage line (which always names --lossless)
        assert f"{packs} holds" in capsys.readouterr().err and not (packs / "p9.npz").exists()


def test_crop_field_of_view_travels_from_packs_to_weights_and_is_checked(tmp_path):
    """A pack folder records the field of view its field crops were cut at (``cut.json``); the
    run trained on it and the weights exported from it carry that value (the plugin then cuts
    its crops at it), and scoring the run on packs cut at another one is refused."""
    from napari_ddrnet.weights import load_bundle
    from training.evaluate import evaluate_run
    from training.export import export_run
    from training.packs import LEGACY_FOV_UM, read_cut, write_cut
    from training.train import train

    rng = np.random.default_rng(0)
    packs = tmp_path / "packs38"
    write_cut(packs, 38.0)
    for name in ("tr", "va"):
        crops = [encode_jpeg(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
                 for _ in range(16)]
        save_pack(packs / f"{name}.npz", crops, [0, 1] * 8, ["a", "b"],
                  [str(i) for i in range(16)])
    assert read_cut(packs) == 38.0 and read_cut(tmp_path / "elsewhere") == LEGACY_FOV_UM
    with pytest.raises(SystemExit, match="38"):
        write_cut(packs, 30.0)  # one folder never mixes two fields of view
    cfg = {"arch": "ddrnet", "train": ["tr"], "val": ["va"], "epochs": 1, "batch_size": 8,
           "augment": {}}
    train(cfg, tmp_path / "run", packs, "cpu", quiet=True)
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["crop_fov_um"] == 38.0
    assert "reproduce" in export_run(tmp_path / "run", tmp_path / "w.safetensors")
    assert load_bundle(tmp_path / "w.safetensors").crop_fov_um == 38.0
    # a card with its own exact steps drops the generic ones
    steps = ["python -m training.pseudo_label ...", "python -m training.train ..."]
    meta = export_run(tmp_path / "run", tmp_path / "w2.safetensors", {"reproduce_steps": steps})
    assert "reproduce" not in meta and meta["reproduce_steps"] == steps
    # --card-only replaces the benchmark metrics of exported weights, tensors untouched
    from training.export import main as export_main

    before = (tmp_path / "w2.safetensors").read_bytes()
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"lisc_side_px": 224, "results": {"kaggle_test": {"plain": {
        "n": 4, "accuracy_plain": 0.25, "accuracy_restricted": 0.75, "macro_f1": 0.5}}}}))
    export_main(["--card-only", "--out", str(tmp_path / "w2.safetensors"),
                 "--benchmark", str(bench)])
    card = json.loads((tmp_path / "w2.json").read_text())
    assert card["metrics_benchmark"]["kaggle_test"]["plain"]["accuracy"] == 0.75
    assert card["reproduce_steps"] == steps and card["sha256"] == meta["sha256"]
    assert (tmp_path / "w2.safetensors").read_bytes() == before
    assert load_bundle(tmp_path / "w2.safetensors").crop_fov_um == 38.0  # checksum still valid
    with pytest.raises(SystemExit):
        export_main(["--card-only", "--out", str(tmp_path / "w2.safetensors")])
    other = tmp_path / "packs30"
    write_cut(other, 30.0)
    (other / "va.npz").write_bytes((packs / "va.npz").read_bytes())
    with pytest.raises(SystemExit, match="38 µm"):
        evaluate_run(tmp_path / "run", other, ["va"], "cpu")
    evaluate_run(tmp_path / "run", packs, ["va"], "cpu")


def test_crop_side_travels_from_packs_to_weights_and_is_checked(tmp_path):
    """Packs cut at 96 px record it; the run and the weights carry it (the plugin then cuts its
    crops at it), and 64 px packs are refused for that run."""
    from napari_ddrnet.weights import load_bundle
    from training.evaluate import evaluate_run
    from training.export import export_run
    from training.packs import read_size, write_cut
    from training.train import train

    rng = np.random.default_rng(0)
    packs = tmp_path / "packs96"
    write_cut(packs, 30.0, 96)
    for name in ("tr", "va"):
        crops = [encode_jpeg(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
                 for _ in range(16)]
        save_pack(packs / f"{name}.npz", crops, [0, 1] * 8, ["a", "b"],
                  [str(i) for i in range(16)])
    assert read_size(packs) == 96 and read_size(tmp_path / "elsewhere") == 64
    with pytest.raises(SystemExit, match="96 px"):
        write_cut(packs, 30.0, 64)  # one folder never mixes two crop sides
    legacy = tmp_path / "old"  # cut before cut.json existed: 30 µm, 64 px
    legacy.mkdir()
    (legacy / "bccd_test.npz").write_bytes(b"")
    with pytest.raises(SystemExit, match="64 px"):
        write_cut(legacy, 30.0, 96)
    cfg = {"arch": "ddrnet", "train": ["tr"], "val": ["va"], "epochs": 1, "batch_size": 8,
           "augment": {}}
    train(cfg, tmp_path / "run", packs, "cpu", quiet=True)
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["input_size"] == 96
    export_run(tmp_path / "run", tmp_path / "w.safetensors")
    assert load_bundle(tmp_path / "w.safetensors").input_size == 96
    other = tmp_path / "packs64"
    write_cut(other, 30.0, 64)
    (other / "va.npz").write_bytes((packs / "va.npz").read_bytes())
    with pytest.raises(SystemExit, match="96 px"):
        evaluate_run(tmp_path / "run", other, ["va"], "cpu")


@needs_data("bccd")
def test_wider_field_of_view_shows_the_bccd_cell_smaller(tmp_path):
    """``prepare --fov-um`` cuts field crops at that width: at 38 µm the same white cell covers
    (30/38)^2 of the area it covers at 30 µm, within the segmentation's tolerance."""
    from skimage import color

    from training.bccd import load_fields
    from training.prepare import field_wbc_crop

    field = next(f for f in load_fields("test") if len(f.boxes()))
    box = field.boxes()[:1]
    areas = []
    for fov in (30.0, 38.0):
        crop = field_wbc_crop(field.image(), box, fov)
        hsv = color.rgb2hsv(crop)
        areas.append(float(((hsv[..., 0] > 0.6) & (hsv[..., 1] > 0.25)).mean()))  # violet nucleus
    assert areas[1] / areas[0] == pytest.approx((30 / 38) ** 2, rel=0.2)


def test_keep_confident_keeps_the_most_confident_share_of_each_class():
    from training.pseudo_label import keep_confident

    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3], [0.2, 0.8], [0.45, 0.55]])
    kept = keep_confident(proba, 0.5)
    # class 0: 3 cells, round(1.5) = 2 kept, the two most confident; class 1: 1 of 2
    assert kept.tolist() == [0, 2, 3]
    assert keep_confident(proba, 1.0).tolist() == [0, 1, 2, 3, 4]


def test_reviewed_box_fixes_drop_bad_boxes_and_add_missing_ones():
    from training.pseudo_label import fixed_boxes, reviewed_box_fixes

    fixes = reviewed_box_fixes()
    # the committed review: 21 bad boxes (17 in raabin/bcd) and 5 white cells without a box
    n_drop = sum(len(d) for d, _ in fixes.values())
    n_add = sum(len(a) for _, a in fixes.values())
    assert n_drop >= 17 and n_add >= 4
    name = next(n for n, (d, a) in fixes.items() if d)
    bad = sorted(fixes[name][0])[0]
    boxes = np.array([bad, (0, 0, 10, 10)])
    out = fixed_boxes(boxes, fixes[name])
    assert tuple(out[0]) == (0, 0, 10, 10) and not any(tuple(b) == bad for b in out)
    assert fixed_boxes(boxes, None) is boxes
    drop_nothing_add_one = (set(), [(1, 2, 3, 4)])
    assert fixed_boxes(np.zeros((0, 4), np.int64), drop_nothing_add_one).tolist() == [[1, 2, 3, 4]]


def test_wbc5_calls_drop_cells_called_no_white_cell_without_renormalising():
    from training.pseudo_label import WBC5, wbc5_calls

    classes = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
               "neutrophil", "platelet"]
    proba = np.full((2, 8), 0.05)
    proba[0, classes.index("platelet")] = 0.6      # called a platelet: not a white cell
    proba[0, classes.index("lymphocyte")] = 0.1
    proba[1, classes.index("monocyte")] = 0.5
    is_wbc, p5 = wbc5_calls(proba, classes)
    assert is_wbc.tolist() == [False, True]
    assert WBC5[p5[1].argmax()] == "monocyte" and p5[1].max() == pytest.approx(0.5)
    assert WBC5[p5[0].argmax()] == "lymphocyte" and p5[0].max() == pytest.approx(0.1)


@needs_data("txlpbc_train")
def test_txl_source_crops_centre_the_annotated_white_cell():
    from training.detection_eval import load_txl_fields
    from training.pseudo_label import source_crops

    crops, names = source_crops("raabin", 30.0, 64, per_source=3)
    fields = load_txl_fields(None, sources=("raabin",), per_source=3)
    assert crops.shape == (sum(len(f.wbc) for f in fields), 64, 64, 3)
    assert names[0] == f"{fields[0].image}#0"
    # the white cell (stained nucleus) is darker than the crop's top rows (background, red cells)
    grey = crops.astype(float).mean(-1)
    centre, border = grey[:, 24:40, 24:40].mean(), grey[:, :4].mean()
    assert centre < border - 20


def test_pseudo_labels_refuse_sources_that_hold_test_images(capsys):
    from training.pseudo_label import main

    for source in ("pbc", "bccd"):
        with pytest.raises(SystemExit):
            main(["--teacher", "x", "--out", "y.npz", "--sources", source])
    assert "invalid choice" in capsys.readouterr().err


@needs_data("txlpbc_train")
def test_pseudo_label_summary_accounts_for_every_cell(tmp_path):
    """One teacher on BCD with the gate: every cell appears once in the all-class argmax, the
    dropped cells are exactly those called no white cell (each with its nearest white cell), and
    the pack holds the cells and calls the summary reports."""
    from collections import Counter

    from napari_ddrnet.weights import WEIGHTS_DIR
    from training.packs import load_pack
    from training.pseudo_label import WBC5, main

    out = tmp_path / "pseudo.npz"
    s = main(["--teacher", str(WEIGHTS_DIR / "ddrnet_wbc8_v2.safetensors"), "--out", str(out),
              "--sources", "bcd", "--reviewed", "--rank", "all"])["bcd"]
    assert sum(s["argmax_all_classes"].values()) == s["cells"] > 100
    called_other = s["cells"] - sum(s["argmax_all_classes"][c] for c in WBC5)
    assert s["not_wbc_calls"] == called_other == sum(s["not_wbc_best_wbc5"].values())
    assert sum(s["predicted"].values()) == s["cells"] - called_other
    assert s["kept"] == sum(s["kept_by_class"].values())
    _, labels, classes, names = load_pack(out)
    assert len(labels) == s["kept"] and all(n.startswith("bcd/") for n in names)
    assert Counter(classes[i] for i in labels) == +Counter(s["kept_by_class"])


def test_mixstyle_mixes_statistics_in_training_only():
    """MixStyle (training/mixstyle.py) re-styles features while training and is the identity
    at inference; the model's weights and their format do not change."""
    import torch

    from napari_ddrnet.model import DDRNet, DDRNetConfig
    from training.mixstyle import MixStyleConfig, attach_mixstyle, mix_style

    x = torch.randn(6, 4, 8, 8) * torch.arange(1, 7).view(6, 1, 1, 1)  # per-sample scales
    y = mix_style(x, alpha=0.1, generator=torch.Generator().manual_seed(1))
    assert y.shape == x.shape and not torch.allclose(y, x)
    # every output's std lies between the smallest and largest input std (a convex mix)
    s_in, s_out = x.std(dim=(2, 3)), y.std(dim=(2, 3))
    assert (s_out >= s_in.min() - 1e-4).all() and (s_out <= s_in.max() + 1e-4).all()
    y2 = mix_style(x, alpha=0.1, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(y, y2)  # reproducible
    torch.manual_seed(0)
    model = DDRNet(DDRNetConfig(num_classes=8, norm="batch"))
    keys = list(model.state_dict())
    inp = torch.rand(4, 3, 64, 64)
    model.eval()
    ref = model(inp)
    attach_mixstyle(model, MixStyleConfig(p=1.0, layers=("stem", "drdb")), seed=0)
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(inp), ref)  # eval: identity
    model.train()
    seen = []
    model.drdb.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    model(inp)  # train: the stem's output reaches the DRDB re-styled
    with torch.no_grad():  # no gradient (e.g. validation in train mode): the hooks stay off
        stem_out = model.stem(inp)
        model(inp)
    torch.testing.assert_close(seen[1], stem_out)  # the no-grad pass reached DRDB unmixed
    assert not torch.allclose(seen[0], stem_out, atol=1e-4)
    model.eval()
    import pytest

    with pytest.raises(ValueError, match="not in the model"):
        attach_mixstyle(model, MixStyleConfig(layers=("nope",)))
