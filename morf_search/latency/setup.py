"""LatencySetup: everything a latency number depends on besides the network itself."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class LatencySetup:
    """Everything a latency number depends on besides the network itself."""

    input_size: Tuple[int, int, int] = (3, 224, 224)
    batch_size: int = 1
    device: str = "cpu"
    threads: Optional[int] = None  # None: torch's current setting
    dtype: str = "float32"
    channels_last: bool = False
    rounds: int = 75
    max_spread: float = 0.25
    round_seconds: float = 0.01  # many short rounds: more independent samples of a noisy machine
    retries: int = 2
    statistic: str = "p10"  # what ``Measurement.latency_ms`` reports: "p10" or "median" of the rounds
    backend: str = "torch"  # what runs the network: "torch" (eager) or "onnxruntime" (see ``backends``)

    @classmethod
    def from_config(cls, config, image_size: int) -> "LatencySetup":
        """From a space file's ``latency`` section and the data's image size."""
        device = "cuda" if config.device == "auto" and torch.cuda.is_available() else config.device
        device = "cpu" if device == "auto" else device
        return cls(input_size=(3, image_size, image_size), batch_size=config.batch_size, device=device,
                   threads=config.threads, dtype=config.dtype, channels_last=config.channels_last,
                   rounds=config.rounds, max_spread=config.max_spread, statistic=config.statistic,
                   backend=config.backend)

    def describe(self) -> str:
        c, h, w = self.input_size
        return (f"{self.backend}, batch {self.batch_size}, {c}x{h}x{w}, {self.dtype}, "
                f"{'channels_last' if self.channels_last else 'NCHW'}, {self.device}, {self.threads_used} threads, "
                f"{self.statistic} of {self.rounds} rounds")

    @property
    def threads_used(self) -> int:
        return self.threads or torch.get_num_threads()
