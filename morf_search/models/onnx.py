"""ONNX graphs of deploy-form networks (and of their parts, for latency tables).

Routed layers fold the batch into the groups of one convolution, so a graph that holds one
fixes its batch size; graphs of plain networks get a dynamic batch axis.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import torch
import torch.nn as nn

from ..layer.deploy import DynamicMoRFConv2d

OPSET = 17


def has_fixed_batch(module: nn.Module) -> bool:
    """True when the graph of ``module`` fixes the batch size (it holds a routed deploy layer)."""
    return any(isinstance(m, DynamicMoRFConv2d) for m in module.modules())


def export_onnx(module: nn.Module, target: Union[Path, str, BinaryIO], example: torch.Tensor) -> None:
    """Write the ONNX graph of ``module`` (in eval mode) traced on ``example``; input ``images``, output ``logits``."""
    dynamic = None if has_fixed_batch(module) else {"images": {0: "batch"}, "logits": {0: "batch"}}
    with warnings.catch_warnings():  # tracing warns about every data-dependent shape it freezes
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), target if isinstance(target, io.IOBase) else str(target),
                          dynamo=False, opset_version=OPSET, input_names=["images"], output_names=["logits"],
                          dynamic_axes=dynamic)


def onnx_bytes(module: nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    export_onnx(module, buffer, example)
    return buffer.getvalue()
