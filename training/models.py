"""Model factory: DDRNet (with ablation switches) and torchvision ResNet baselines."""

from __future__ import annotations

import torchvision
from torch import nn

from napari_ddrnet.model import DDRNet, DDRNetConfig

RESNETS = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50,
           "resnet101": torchvision.models.resnet101}


def build_model(arch: str, num_classes: int, ddrnet: dict | None = None) -> nn.Module:
    """``arch`` is ``"ddrnet"`` (``ddrnet`` holds :class:`DDRNetConfig` overrides) or a ResNet.

    ResNets start from random weights (no download at run time) and are trained exactly like
    DDRNet, so the comparison isolates the architecture.
    """
    if arch == "ddrnet":
        return DDRNet(DDRNetConfig(num_classes=num_classes, **(ddrnet or {})))
    if arch in RESNETS:
        return RESNETS[arch](weights=None, num_classes=num_classes)
    raise ValueError(f"unknown arch {arch!r}; choose ddrnet or one of {sorted(RESNETS)}")
