"""Registry of classifier architectures the weights loader can build.

A weights card names its ``architecture`` and carries its ``config``; the loader looks the name
up here, so a model trained with another registered architecture (a torchvision ResNet baseline,
a DDRNet variant) loads through the same safe path. Register new ones with
:func:`register_architecture`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .model import DDRNet, DDRNetConfig

#: name -> builder(config dict, number of classes) -> module returning logits.
_REGISTRY: dict[str, Callable[[dict, int], nn.Module]] = {}


def register_architecture(name: str, builder: Callable[[dict, int], nn.Module]) -> None:
    """Make ``name`` loadable; ``builder(config, num_classes)`` returns an untrained model."""
    _REGISTRY[name] = builder


def architectures() -> tuple[str, ...]:
    """Names of the registered architectures."""
    return tuple(sorted(_REGISTRY))


def build_architecture(name: str, config: dict | None, num_classes: int) -> nn.Module:
    """Build a registered architecture with random weights.

    Raises
    ------
    KeyError
        When ``name`` is not registered.
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown architecture {name!r}; registered: {', '.join(architectures())}")
    return _REGISTRY[name](dict(config or {}), int(num_classes))


def _ddrnet(config: dict, num_classes: int) -> nn.Module:
    cfg = DDRNetConfig.from_dict({**config, "num_classes": num_classes})
    return DDRNet(cfg)


def _resnet(factory_name: str) -> Callable[[dict, int], nn.Module]:
    def build(config: dict, num_classes: int) -> nn.Module:
        import torchvision

        # Random init: weights come from the file, nothing is downloaded.
        return getattr(torchvision.models, factory_name)(weights=None, num_classes=num_classes)
    return build


register_architecture("DDRNet", _ddrnet)
for _name in ("resnet18", "resnet50", "resnet101"):
    register_architecture(_name, _resnet(_name))
