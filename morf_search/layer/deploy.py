"""Deploy form of an input-routed MoRF layer: the router and the padded bank of active experts.

A static layer deploys to a plain ``nn.Conv2d``; soft and hard layers still choose their
kernel per sample, so they keep a router and a bank already padded to one size, which
makes inference a router pass, one small matrix product and one convolution (top-1 hard
routing skips the product: each sample takes its expert's kernel, at the expert's own size).
The padding is zeros, so the state dict (and every export) stores each expert at its own
size (``bank_k3``, ``bank_k5``, ``bank_k3d2``, ...) and loading pads them again: the file
holds no zeros, and inference runs on the padded bank as before. ``state_dict(keep_vars=True)``,
which tracing and ONNX export read to find the Parameters, keeps the padded one.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn
from timm.layers import register_notrace_module

from .experts import ExpertLike, parse_experts
from .kernels import crop_kernel, dynamic_conv2d, stack_kernels
from .routing import DYNAMIC_MODES, Router, check_top_k, dynamic_weights


@register_notrace_module  # a leaf for FX feature extraction, like the training form
class DynamicMoRFConv2d(nn.Module):
    """Per-sample convolution whose kernel is the router-weighted sum of a fixed bank.

    The router's logits already include the training temperature, so routing here is
    ``softmax(logits)`` (soft) or the renormalized top-k of it (hard). ``experts`` name the
    bank's kernels in sorted order; each sits zero-padded in the largest span, as
    ``MoRFConv2d.fuse`` places it.
    """

    __jit_ignored_attributes__ = ["experts"]  # forward reads their sizes and dilations as lists

    def __init__(self, in_channels: int, out_channels: int, experts: Sequence[ExpertLike],
                 routing: str, top_k: int = 1, stride: int = 1, groups: int = 1, bias: bool = True,
                 router_hidden: int = 8, router_act: type = nn.ReLU, device=None, dtype=None):
        super().__init__()
        if routing not in DYNAMIC_MODES:
            raise ValueError(f"routing: a dynamic deploy form routes 'soft' or 'hard', not {routing!r}")
        self.experts = parse_experts(experts, "experts")
        self.expert_sizes: List[int] = [e.kernel_size for e in self.experts]
        self.expert_dilations: List[int] = [e.dilation for e in self.experts]
        num_experts, kernel_size = len(self.experts), max(e.span for e in self.experts)
        if routing == "hard":
            check_top_k(top_k, num_experts)
        factory = dict(device=device, dtype=dtype)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.routing, self.top_k, self.stride, self.groups = routing, top_k, stride, groups
        self.router = Router(in_channels, num_experts, router_hidden, router_act).to(**factory)
        self.bank = nn.Parameter(torch.zeros(num_experts, out_channels, in_channels // groups,
                                             kernel_size, kernel_size, **factory))
        self.bias_bank = nn.Parameter(torch.zeros(num_experts, out_channels, **factory)) if bias else None

    def padding_numel(self) -> int:
        """Entries of the bank that are padding (zeros in memory, not stored)."""
        stored = sum(self.bank.shape[1] * self.bank.shape[2] * size ** 2 for size in self.expert_sizes)
        return self.bank.numel() - stored

    def _bank_keys(self, prefix: str) -> List[str]:
        return [f"{prefix}bank_k{expert}" for expert in self.experts]

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if keep_vars:  # tools that ask for the Parameters themselves (jit tracing, ONNX export) get the padded one
            return
        bank = destination.pop(prefix + "bank")
        for index, key in enumerate(self._bank_keys(prefix)):
            destination[key] = crop_kernel(bank[index], self.expert_sizes[index],
                                           self.expert_dilations[index]).contiguous()  # safetensors saves no views

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        keys = self._bank_keys(prefix)
        if prefix + "bank" not in state_dict and all(key in state_dict for key in keys):  # padded ones load as is
            state_dict[prefix + "bank"] = stack_kernels([state_dict.pop(key) for key in keys], self.expert_sizes,
                                                        self.expert_dilations)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def routing_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample expert weights (B, E), e.g. for routing statistics."""
        return dynamic_weights(self.router(x), self.routing, self.top_k, tau=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dynamic_conv2d(x, self.router(x), self.routing, self.top_k, 1.0, self.bank, self.bias_bank,
                              self.expert_sizes, self.expert_dilations, self.stride, self.groups)

    def extra_repr(self) -> str:
        experts = ",".join(map(str, self.experts))
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, experts=({experts}), "
                + routing_repr(self.routing, self.top_k, self.stride, self.groups))


def routing_repr(routing: str, top_k: int, stride: int, groups: int) -> str:
    """The routing and geometry part of a MoRF layer's repr (training and deploy forms alike)."""
    text = f"routing={routing}" + (f", top_k={top_k}" if routing == "hard" else "")
    return text + (f", stride={stride}" if stride != 1 else "") + (f", groups={groups}" if groups != 1 else "")
