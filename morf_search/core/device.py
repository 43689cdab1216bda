"""Device selection: ``auto`` means CUDA when present, else CPU."""
from __future__ import annotations

import torch

from .errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device: unknown device {name!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device: {name!r} requested but CUDA is not available here; use cpu or auto")
    return device
