"""Device selection: ``auto`` means CUDA when present, else CPU; anything else must exist here."""
from __future__ import annotations

import torch

from .errors import UserError


class DeviceError(UserError, ValueError):
    """A device that does not exist on this machine (a ValueError too, so the space file's schema reports it)."""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise DeviceError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{name!r} requested but CUDA is not available here; use cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"{name!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
