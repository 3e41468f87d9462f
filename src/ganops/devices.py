"""Device choice: ``auto`` means CUDA when available, else CPU (probed only when asked, never on import)."""

from __future__ import annotations

import torch


class DeviceError(RuntimeError):
    """``base.device`` names a device this machine does not have."""


def resolve_device(name: str = "auto", what: str = "base.device") -> torch.device:
    """Turn ``base.device`` (or the setting ``what``) into a torch device; an unavailable explicit choice is
    an error that names the setting."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{what} is {name!r} but CUDA is not available here (use auto or cpu)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"{what} is {name!r} but MPS is not available here (use auto or cpu)")
    return dev
