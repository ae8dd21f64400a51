"""DDRNet: shapes, ablation switches, fused inference, safe weight loading."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from napari_ddrnet.model import DDRNet, DDRNetConfig, count_parameters, fuse_for_inference
from napari_ddrnet.weights import DEFAULT_WEIGHTS, WeightsError, load_bundle, metadata_path


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_forward_shapes_and_budget(norm):
    m = DDRNet(DDRNetConfig(num_classes=8, norm=norm)).eval()
    assert m(torch.randn(3, 3, 64, 64)).shape == (3, 8)
    assert m(torch.randn(1, 3, 96, 96)).shape == (1, 8)  # any input size
    assert count_parameters(m) < 1_000_000


@pytest.mark.parametrize(("drdb", "glfeb", "csab"), [(False, False, False), (True, False, False),
                                                     (True, False, True), (False, True, False),
                                                     (False, True, True), (True, True, False)])
def test_ablation_switches(drdb, glfeb, csab):
    cfg = DDRNetConfig(num_classes=4, use_drdb=drdb, use_glfeb=glfeb, use_csab=csab)
    m = DDRNet(cfg).eval()
    assert (m.drdb is not None) == drdb and (m.glfeb is not None) == glfeb
    assert (m.csab is not None) == csab
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 4)
    assert count_parameters(m) < count_parameters(DDRNet(DDRNetConfig(num_classes=4)))


def test_fused_inference_matches():
    torch.manual_seed(0)
    m = DDRNet(DDRNetConfig(norm="batch")).eval()
    for mod in m.modules():  # non-trivial running statistics
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
        fused = fuse_for_inference(m)(x)
    torch.testing.assert_close(fused, ref, atol=1e-4, rtol=1e-4)


def test_crop_input_norm_cancels_a_cast_and_a_new_exposure():
    """input_norm="crop": a per-channel gain and offset on the whole crop (white balance,
    exposure, stain strength) gives the same logits; a plain model's logits move."""
    torch.manual_seed(0)
    x = torch.rand(4, 3, 64, 64)
    gain = torch.tensor([1.25, 0.8, 1.1])[None, :, None, None]
    cast = x * gain + torch.tensor([0.05, -0.03, 0.0])[None, :, None, None]
    moved = {}
    for input_norm in ("crop", "none"):
        torch.manual_seed(1)
        m = DDRNet(DDRNetConfig(norm="batch", input_norm=input_norm)).eval()
        with torch.no_grad():
            a, b = m((x - 0.5) / 0.25), m((cast - 0.5) / 0.25)
        moved[input_norm] = float((a - b).abs().max() / a.abs().max())
    assert moved["crop"] < 1e-3 and moved["none"] > 100 * moved["crop"], moved
    # it travels with the weights card and survives BatchNorm folding
    cfg = DDRNetConfig.from_dict(DDRNetConfig(input_norm="crop").to_dict())
    assert cfg.input_norm == "crop"
    m = DDRNet(cfg).eval()
    with torch.no_grad():
        ref = m(x)
        torch.testing.assert_close(fuse_for_inference(m)(x), ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="input_norm"):
        DDRNet(DDRNetConfig(input_norm="lab"))
    assert DDRNetConfig.from_dict({"norm": "batch"}).input_norm == "none"  # older cards


def test_crop_lab_input_norm_matches_skimage_and_cancels_a_lab_cast():
    """input_norm="crop_lab": the LAB conversion is skimage's, and a gain/offset per LAB
    channel (a blue-yellow cast, a paler stain) gives the same logits."""
    from skimage.color import lab2rgb, rgb2lab

    from napari_ddrnet.model import rgb_to_lab

    rng = np.random.default_rng(0)
    rgb = rng.uniform(0.05, 0.95, (2, 24, 24, 3))
    ours = rgb_to_lab(torch.as_tensor(rgb).permute(0, 3, 1, 2).float()).permute(0, 2, 3, 1)
    np.testing.assert_allclose(ours.numpy(), rgb2lab(rgb), atol=0.05)
    # A smooth crop kept inside the sRGB gamut before and after the cast.
    lab = rgb2lab(0.3 + 0.4 * rgb)
    cast = lab * np.array([0.9, 1.2, 0.8]) + np.array([4.0, -3.0, 6.0])
    x, y = (torch.as_tensor(lab2rgb(v)).permute(0, 3, 1, 2).float() for v in (lab, cast))
    torch.manual_seed(2)
    m = DDRNet(DDRNetConfig(norm="batch", input_norm="crop_lab")).eval()
    plain = DDRNet(DDRNetConfig(norm="batch")).eval()
    plain.load_state_dict(m.state_dict())
    with torch.no_grad():
        moved = {name: float((net((x - 0.5) / 0.25) - net((y - 0.5) / 0.25)).abs().max())
                 for name, net in (("crop_lab", m), ("none", plain))}
    assert moved["none"] > 30 * moved["crop_lab"], moved


def test_shipped_weights_load_deterministically():
    a, b = load_bundle(), load_bundle()
    assert a.classes == ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte",
                         "monocyte", "neutrophil", "platelet")
    assert DEFAULT_WEIGHTS.stat().st_size < 5 * 1024 * 1024
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a.model(x), b.model(x))
    assert a.meta["metrics"]["pbc_test"]["accuracy"] > 0.9


def test_checksum_and_wrong_weights_are_rejected(tmp_path):
    w = tmp_path / "w.safetensors"
    shutil.copy(DEFAULT_WEIGHTS, w)
    shutil.copy(metadata_path(DEFAULT_WEIGHTS), metadata_path(w))
    load_bundle(w)  # intact copy loads
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="Checksum mismatch"):
        load_bundle(w)
    # Right checksum, wrong architecture.
    shutil.copy(DEFAULT_WEIGHTS, w)
    meta = json.loads(metadata_path(DEFAULT_WEIGHTS).read_text())
    meta["config"]["stem_channels"] = 16
    metadata_path(w).write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="do not fit"):
        load_bundle(w)
    with pytest.raises(WeightsError, match="not found"):
        load_bundle(tmp_path / "missing.safetensors")
    metadata_path(w).unlink()
    with pytest.raises(WeightsError, match="metadata not found"):
        load_bundle(w)


def test_pickle_is_never_loaded(tmp_path):
    evil = tmp_path / "evil.safetensors"
    torch.save({"x": np.arange(3)}, evil)  # a pickle renamed
    meta = json.loads(metadata_path(DEFAULT_WEIGHTS).read_text())
    from napari_ddrnet.weights import sha256_file

    meta["sha256"] = sha256_file(evil)
    metadata_path(evil).write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="Cannot read"):
        load_bundle(evil)


def test_device_resolution():
    from napari_ddrnet.classify import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")


def test_any_registered_architecture_loads(tmp_path):
    """The loader builds what the card names (here a torchvision ResNet-18), not only DDRNet."""
    from napari_ddrnet.architectures import architectures, build_architecture
    from napari_ddrnet.classify import Classifier
    from napari_ddrnet.weights import export_weights

    assert {"DDRNet", "resnet18"} <= set(architectures())
    net = build_architecture("resnet18", {}, 3).eval()
    meta = {"architecture": "resnet18", "classes": ["a", "b", "c"], "config": {},
            "input_size": 64, "crop_fov_um": 30.0, "mean": [0.5] * 3, "std": [0.25] * 3}
    w = tmp_path / "r18.safetensors"
    export_weights(net.state_dict(), meta, w)
    clf = Classifier(w, device="cpu", tta=False)
    probs = clf.predict_proba(np.zeros((2, 64, 64, 3), np.uint8))
    assert probs.shape == (2, 3)
    with torch.no_grad():
        ref = torch.softmax(net(torch.full((1, 3, 64, 64), -2.0)), 1).numpy()
    np.testing.assert_allclose(probs[0], ref[0], atol=1e-4)
    meta["architecture"] = "AlexNet-9000"
    export_weights(net.state_dict(), meta, w)
    with pytest.raises(WeightsError, match="unknown architecture"):
        load_bundle(w)


def test_card_without_transforms_is_rejected(tmp_path):
    w = tmp_path / "w.safetensors"
    shutil.copy(DEFAULT_WEIGHTS, w)
    meta = json.loads(metadata_path(DEFAULT_WEIGHTS).read_text())
    del meta["crop_fov_um"]
    metadata_path(w).write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="crop_fov_um"):
        load_bundle(w)


def test_a_card_names_its_model_else_the_file_does(tmp_path):
    """CELLS.csv's ``model`` column and the widget's status read ``ModelBundle.name``."""
    assert load_bundle().name == DEFAULT_WEIGHTS.stem == "ddrnet_wbc8_v8"
    w = tmp_path / "my_lab_model.safetensors"
    shutil.copy(DEFAULT_WEIGHTS, w)
    meta = json.loads(metadata_path(DEFAULT_WEIGHTS).read_text())
    del meta["name"]
    metadata_path(w).write_text(json.dumps(meta))
    assert load_bundle(w).name == "my_lab_model"
    metadata_path(w).write_text("[1, 2]")
    with pytest.raises(WeightsError, match="not a JSON object"):
        load_bundle(w)


def test_adapted_to_lab_is_a_copy_and_needs_enough_cells():
    from napari_ddrnet.classify import MIN_LAB_CROPS, Classifier

    clf = Classifier(device="cpu", tta=False)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (MIN_LAB_CROPS, 64, 64, 3), dtype=np.uint8)
    before = clf.predict_proba(crops[:4])
    with pytest.raises(ValueError, match="at least"):
        clf.adapted_to_lab(crops[:8])
    adapted = clf.adapted_to_lab(crops)
    assert adapted.lab_colour is not None and clf.lab_colour is None
    # CELLS.csv's model column tells the adapted calls from the model's own
    assert adapted.bundle.name == f"{clf.bundle.name}+new-lab" != clf.bundle.name
    assert adapted.bundle.meta["shift_warning"] == clf.bundle.meta["shift_warning"]
    np.testing.assert_allclose(clf.predict_proba(crops[:4]), before, atol=1e-6)
    assert not np.allclose(adapted.predict_proba(crops[:4]), before, atol=1e-3)


@pytest.mark.parametrize("tta", [True, False])
def test_probabilities_do_not_depend_on_batching(tta):
    """A crop gets the same bits alone, in a short chunk or in a full batch (tiles of a slide
    and whole fields must agree); short TTA chunks stack their views into one batch."""
    from napari_ddrnet.classify import Classifier

    rng = np.random.default_rng(1)
    crops = rng.integers(0, 255, (20, 64, 64, 3), dtype=np.uint8)
    full = Classifier(device="cpu", tta=tta).predict_proba(crops)
    assert np.allclose(full.sum(1), 1, atol=1e-5)
    clf = Classifier(device="cpu", tta=tta)
    for k in (1, 3, 7, 8, 9, 10, 11, 12, 15, 16, 17):  # 9-11 differed on an AVX-512 CPU at 8
        np.testing.assert_array_equal(clf.predict_proba(crops[:k]), full[:k])
    chunked = Classifier(device="cpu", tta=tta, batch_size=6).predict_proba(crops)
    np.testing.assert_array_equal(chunked, full)


def test_card_input_size_is_read_without_loading(tmp_path):
    """The widget sizes its memory check by the chosen model's crops (112 px for the default,
    96 px for v7, 64 px for v6) before anything is loaded; an unreadable card gives ``None``,
    not an error (the run itself then says what is wrong)."""
    from napari_ddrnet.weights import card_input_size

    assert card_input_size(None) == 112 == load_bundle().input_size
    assert card_input_size("ddrnet_wbc8_v7") == 96
    assert card_input_size("ddrnet_wbc8_v6") == 64
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"x")
    assert card_input_size(w) is None  # no card beside it
    metadata_path(w).write_text("{broken")
    assert card_input_size(w) is None
