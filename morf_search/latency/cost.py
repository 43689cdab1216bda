"""What a network costs besides time: parameters and FLOPs (torch.utils.flop_counter)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..layer.deploy import DynamicMoRFConv2d


def count_params(model: nn.Module) -> int:
    """Parameters as the model stores them: a routed deploy layer's experts each at their own size, not padded."""
    padding = sum(layer.padding_numel() for layer in model.modules() if isinstance(layer, DynamicMoRFConv2d))
    return sum(p.numel() for p in model.parameters()) - padding


@torch.no_grad()
def count_flops(model: nn.Module, input_size: Sequence[int], batch_size: int = 1) -> int:
    """FLOPs (multiply and add counted separately) of one eval-mode forward at ``input_size`` (C, H, W)."""
    param = next(model.parameters())
    x = torch.zeros(batch_size, *input_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops()
