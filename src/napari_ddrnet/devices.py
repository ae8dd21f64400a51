"""Where the classifier runs: the one list of device choices and how ``auto`` resolves.

Kept apart from the classifier so the widget and the CLI can offer the choices without
importing torch.
"""

from __future__ import annotations

#: Device names accepted everywhere (widget, CLI, Python API, training).
DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto"):
    """``auto`` picks cuda, then mps, then cpu; a forced device that is absent is an error.

    Returns
    -------
    torch.device
    """
    import torch

    if name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {name!r}")
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available")
    if name == "mps" and not has_mps:
        raise ValueError("device 'mps' was requested but Apple MPS is not available")
    return torch.device(name)
