"""DDRNet: deep dilated residual network with channel/spatial attention (Sci. Rep. 2024).

A lean, faithful reading of the paper's blocks; every interpretation of vague text is listed in
``docs/model.md``. ``use_drdb``, ``use_glfeb`` and ``use_csab`` switch blocks off to reproduce the
rows of the paper's ablation (Table 6).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .preprocess import MEAN, STD


@dataclass(frozen=True)
class DDRNetConfig:
    """Architecture hyper-parameters (stored with the weights)."""

    num_classes: int = 8
    in_channels: int = 3
    stem_channels: int = 32
    glfeb_channels: tuple[int, int] = (64, 128)
    dilations: tuple[int, int, int] = (1, 2, 4)
    norm: str = "group"  # "group" (paper: GroupNorm with 32 groups) or "batch"
    groups: int = 32
    path_dropout: float = 0.05
    head_dropout: float = 0.2
    use_drdb: bool = True
    use_glfeb: bool = True
    use_csab: bool = True
    #: "none"; "crop": each crop's RGB channels are standardised to zero mean and unit variance
    #: before the stem, so the network cannot see a per-channel gain or offset (a camera's white
    #: balance, exposure, stain intensity); "crop_lab": the same in CIELAB (a per-crop Reinhard
    #: colour transfer), which also cancels casts that mix the RGB channels (issue 7).
    input_norm: str = "none"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["glfeb_channels"] = list(self.glfeb_channels)
        d["dilations"] = list(self.dilations)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DDRNetConfig:
        d = dict(d)
        d["glfeb_channels"] = tuple(d.get("glfeb_channels", (64, 128)))
        d["dilations"] = tuple(d.get("dilations", (1, 2, 4)))
        return cls(**d)


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(groups, channels), channels)
    raise ValueError(f"unknown norm {kind!r}")


def conv_norm_act(cin: int, cout: int, cfg: DDRNetConfig, stride: int = 1, dilation: int = 1,
                  act: bool = True) -> nn.Sequential:
    """3x3 convolution, normalisation and (optionally) ReLU."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        _norm(cfg.norm, cout, cfg.groups),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ConvBlock(nn.Module):
    """Stem: conv (stride 2), max-pool, GroupNorm(32), ReLU — the paper's order."""

    def __init__(self, cfg: DDRNetConfig):
        super().__init__()
        c = cfg.stem_channels
        self.conv = nn.Conv2d(cfg.in_channels, c, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm = _norm(cfg.norm, c, cfg.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.pool(self.conv(x))), inplace=True)


class ResidualPath(nn.Module):
    """conv-GN-ReLU-conv-GN with dropout on the residual branch, plus identity."""

    def __init__(self, c: int, cfg: DDRNetConfig, dilation: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            conv_norm_act(c, c, cfg, dilation=dilation),
            conv_norm_act(c, c, cfg, dilation=dilation, act=False),
        )
        self.drop = nn.Dropout2d(cfg.path_dropout) if cfg.path_dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.drop(self.body(x)), inplace=True)


class DRDB(nn.Module):
    """Deep residual dilated block: 3 residual conv paths interleaved with 3 residual dilated
    paths (dilations 1, 2, 4); the six outputs are concatenated and fused by a 1x1 conv."""

    def __init__(self, c: int, cfg: DDRNetConfig):
        super().__init__()
        paths = []
        for d in cfg.dilations:
            paths.append(ResidualPath(c, cfg, dilation=1))
            paths.append(ResidualPath(c, cfg, dilation=d))
        self.paths = nn.ModuleList(paths)
        self.fuse = nn.Sequential(nn.Conv2d(6 * c, c, 1, bias=False),
                                  _norm(cfg.norm, c, cfg.groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        y = x
        for p in self.paths:
            y = p(y)
            outs.append(y)
        return F.relu(x + self.fuse(torch.cat(outs, 1)), inplace=True)


class GLFEB(nn.Module):
    """Global/local feature enhancement: three conv-GN-ReLU layers (64, 128, then back to 64),
    concatenated with the stem's global feature, then tanh (output 2 x 64 channels)."""

    def __init__(self, cin: int, stem_c: int, cfg: DDRNetConfig):
        super().__init__()
        c1, c2 = cfg.glfeb_channels
        self.local = nn.Sequential(
            conv_norm_act(cin, c1, cfg, stride=2),
            conv_norm_act(c1, c2, cfg),
            conv_norm_act(c2, c1, cfg, act=False),
        )
        self.global_proj = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(stem_c, c1, 1, bias=False),
                                         _norm(cfg.norm, c1, cfg.groups))
        self.out_channels = 2 * c1

    def forward(self, x: torch.Tensor, stem: torch.Tensor) -> torch.Tensor:
        local = self.local(x)
        glob = self.global_proj(stem)
        if glob.shape[-2:] != local.shape[-2:]:
            glob = F.adaptive_avg_pool2d(glob, local.shape[-2:])
        return torch.tanh(torch.cat([local, glob], 1))


class CSAB(nn.Module):
    """Channel attention (avg- and max-pooled descriptors through a shared MLP) then spatial
    attention (5x5 conv on channel mean/max), sigmoid gates; the result is added back to the
    input (the paper's element-wise sum with the GLFEB output)."""

    def __init__(self, c: int, reduction: int = 8):
        super().__init__()
        hidden = max(4, c // reduction)
        self.mlp = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, c))
        self.spatial = nn.Conv2d(2, 1, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean((2, 3)))
        mx = self.mlp(x.amax((2, 3)))
        ca = torch.sigmoid(avg + mx)[:, :, None, None]
        y = x * ca
        sa = torch.sigmoid(self.spatial(torch.cat([y.mean(1, keepdim=True),
                                                   y.amax(1, keepdim=True)], 1)))
        return x + y * sa


INPUT_NORMS = ("none", "crop", "crop_lab")

#: Floor of a crop channel's variance (in units of the normalised input, where a typical crop
#: has a variance near 1), so a flat crop (one colour) stays finite instead of amplifying noise.
CROP_VAR_FLOOR = 1e-2


def crop_standardise(x: torch.Tensor) -> torch.Tensor:
    """Each sample's channels to zero mean and unit variance over the crop (``input_norm="crop"``).

    Per-channel gains and offsets applied to a whole crop cancel exactly, so the features do not
    depend on white balance, exposure or overall stain intensity; the colours of the cell
    relative to its surroundings (red cells, plasma) are all that remains.
    """
    mean = x.mean((2, 3), keepdim=True)
    var = x.var((2, 3), keepdim=True, unbiased=False)
    return (x - mean) * torch.rsqrt(var + CROP_VAR_FLOOR)


# sRGB (D65) -> XYZ, rows scaled by the white point so that white maps to (1, 1, 1).
_RGB2XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                         [0.212671, 0.715160, 0.072169],
                         [0.019334, 0.119193, 0.950227]]) / torch.tensor(
                             [0.95047, 1.0, 1.08883])[:, None]
#: CIELAB channels are divided by these before the per-crop standardisation so that a
#: typical crop's channels have a standard deviation of order one, as the normalised RGB
#: input does, and the variance floor means the same for both (a rough scale, not a fit).
_LAB_SCALE = (15.0, 10.0, 10.0)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` sRGB in 0..1 to CIELAB (D65), as :func:`skimage.color.rgb2lab`."""
    rgb = rgb.clamp(0, 1)
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,njhw->nihw", _RGB2XYZ.to(rgb.device, rgb.dtype), lin)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0.008856) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]),
                        200 * (f[:, 1] - f[:, 2])], 1)


def crop_standardise_lab(x: torch.Tensor) -> torch.Tensor:
    """``input_norm="crop_lab"``: the crop (normalised with :data:`preprocess.MEAN`/``STD``, as
    every model here is) back to 0..1 RGB, to CIELAB, and each LAB channel standardised over
    the crop: a per-crop Reinhard transfer to a fixed target. Any gain and offset per LAB channel
    cancels (a cast along the red-green or blue-yellow axis, a lighter or more saturated stain).
    """
    m = torch.tensor(MEAN, device=x.device, dtype=x.dtype)[None, :, None, None]
    s = torch.tensor(STD, device=x.device, dtype=x.dtype)[None, :, None, None]
    lab = rgb_to_lab(x * s + m)
    scale = torch.tensor(_LAB_SCALE, device=x.device, dtype=x.dtype)[None, :, None, None]
    return crop_standardise(lab / scale)


class DDRNet(nn.Module):
    """DDRNet classifier returning logits; apply softmax for single-label probabilities."""

    def __init__(self, cfg: DDRNetConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DDRNetConfig()
        if cfg.input_norm not in INPUT_NORMS:
            raise ValueError(f"unknown input_norm {cfg.input_norm!r}; choose one of {INPUT_NORMS}")
        c = cfg.stem_channels
        self.stem = ConvBlock(cfg)
        self.drdb = DRDB(c, cfg) if cfg.use_drdb else None
        if cfg.use_glfeb:
            self.glfeb = GLFEB(c, c, cfg)
            feat = self.glfeb.out_channels
        else:
            self.glfeb = None
            feat = c
        self.csab = CSAB(feat) if cfg.use_csab else None
        self.bn = nn.BatchNorm1d(feat)
        self.drop = nn.Dropout(cfg.head_dropout)
        self.fc = nn.Linear(feat, cfg.num_classes)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled feature vector before the classification head."""
        if self.cfg.input_norm == "crop":
            x = crop_standardise(x)
        elif self.cfg.input_norm == "crop_lab":
            x = crop_standardise_lab(x)
        stem = self.stem(x)
        y = self.drdb(stem) if self.drdb is not None else stem
        if self.glfeb is not None:
            y = self.glfeb(y, stem)
        if self.csab is not None:
            y = self.csab(y)
        return y.mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.bn(self.features(x))))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Fold every ``Conv2d`` directly followed by a ``BatchNorm2d`` into the convolution.

    Works in place on an eval-mode model and returns it; GroupNorm layers (which depend on the
    sample) are left as they are. Outputs are unchanged up to float rounding.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.children())
        for i in range(len(children) - 1):
            conv, bn = children[i], children[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(conv, bn)
                module[i + 1] = nn.Identity()
    return model
