"""Training precision: the autocast dtype, fp16's grad scaler and the memory format, per device.

``auto`` is bf16 on a CUDA device that supports it, else fp32. bf16 keeps fp32's exponent
range, so it trains without loss scaling; fp16 does not, and torch's ``GradScaler`` is the
CUDA tool for it, so fp16 is refused on other devices. Only training uses this: deploy
checks and latency keep their own dtype (``latency.dtype``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """How one training runs its forward and backward passes on ``device``."""

    name: str  # fp32, bf16 or fp16
    device: torch.device

    @property
    def channels_last(self) -> bool:
        """NHWC on CUDA, where cuDNN's convolutions (and tensor cores) prefer it."""
        return self.device.type == "cuda"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self):
        return torch.autocast(self.device.type, dtype=DTYPES[self.name], enabled=self.name != "fp32")

    def scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 (on CUDA, the only device fp16 is allowed on); a pass-through otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")


def resolve_precision(name: str, device: torch.device, field: str = "precision") -> Precision:
    """``name`` (one of the schema's PRECISIONS) on ``device``; ``field`` names the setting in errors."""
    if name == "auto":
        name = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise UserError(f"{field}: fp16 trains with a CUDA grad scaler, and the device is {device}; "
                        "use bf16 or fp32 there")
    return Precision(name, device)
