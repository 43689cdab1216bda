"""Pure tensor math behind MoRF: placing expert kernels on a common grid and mixing them.

Convolution is linear in its weight, so ``sum_e w_e (K_e * x) == (sum_e w_e pad(K_e)) * x``
where ``pad`` dilates a kernel and centres it in the largest active window. Everything
here is differentiable and free of ``nn.Module`` state so the training form and the
deploy form share one implementation.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .experts import Expert
from .routing import dynamic_weights


def place_kernel(weight: torch.Tensor, expert: Expert, size: int) -> torch.Tensor:
    """Dilate ``weight`` (..., k, k) by the expert's dilation and centre it in a ``size`` window."""
    span = expert.span
    if size < span or (size - span) % 2:
        raise ValueError(f"cannot centre a {span}x{span} kernel in a {size}x{size} window")
    if expert.dilation > 1:
        dilated = weight.new_zeros(*weight.shape[:-2], span, span)
        dilated[..., :: expert.dilation, :: expert.dilation] = weight
        weight = dilated
    margin = (size - span) // 2
    return F.pad(weight, (margin, margin, margin, margin)) if margin else weight


def crop_kernel(placed: torch.Tensor, expert: Expert) -> torch.Tensor:
    """The expert's own (..., k, k) kernel back out of its ``place_kernel`` window."""
    margin = (placed.shape[-1] - expert.span) // 2
    window = placed[..., margin:placed.shape[-1] - margin, margin:placed.shape[-1] - margin]
    return window[..., ::expert.dilation, ::expert.dilation]


def stack_kernels(weights: Sequence[torch.Tensor], experts: Sequence[Expert]) -> torch.Tensor:
    """Stack expert kernels into one bank (E, out, in/groups, K, K), K the largest span."""
    size = max(e.span for e in experts)
    return torch.stack([place_kernel(w, e, size) for w, e in zip(weights, experts)])


def mix_static(bank: torch.Tensor, bias_bank: Optional[torch.Tensor], mix: torch.Tensor):
    """Merge a bank with per-expert, per-channel weights ``mix`` (E, out) into one kernel and bias."""
    weight = (mix[:, :, None, None, None] * bank).sum(0)
    bias = (mix * bias_bank).sum(0) if bias_bank is not None else None
    return weight, bias


def per_sample_conv2d(
        x: torch.Tensor,
        mix: torch.Tensor,
        bank: torch.Tensor,
        bias_bank: Optional[torch.Tensor],
        stride: int,
        groups: int,
) -> torch.Tensor:
    """One convolution with a different merged kernel per sample.

    ``mix`` (B, E) weights the bank (E, out, in/groups, K, K); the batch is folded into the
    channel axis so that ``groups * B`` groups run as a single ``conv2d`` call.
    """
    batch, channels, height, width = x.shape
    num_experts, out_channels = bank.shape[:2]
    kernel = torch.mm(mix, bank.reshape(num_experts, -1)).reshape(batch * out_channels, *bank.shape[2:])
    bias = torch.mm(mix, bias_bank).reshape(-1) if bias_bank is not None else None
    folded = x.reshape(1, batch * channels, height, width)
    out = F.conv2d(folded, kernel, bias, stride, bank.shape[-1] // 2, 1, groups * batch)
    return out.reshape(batch, out_channels, *out.shape[-2:])


def top1_conv2d(
        x: torch.Tensor,
        expert: torch.Tensor,
        bank: torch.Tensor,
        bias_bank: Optional[torch.Tensor],
        experts: Sequence[Expert],
        stride: int,
        groups: int,
) -> torch.Tensor:
    """Each sample convolved with the one expert it selected (top-1 hard routing).

    Samples are sorted by their expert, each contiguous run is convolved with that expert's
    shared kernel at its own size and dilation (cropped from the bank, whose padding is zero),
    and the outputs are put back in batch order: no per-sample kernels are built, and a
    sample routed to a 3x3 expert costs a 3x3 convolution. Gradients reach the selected
    experts only, so this is exact wherever the routing weights need no gradient.
    """
    def conv(inputs: torch.Tensor, index: int) -> torch.Tensor:
        bias = bias_bank[index] if bias_bank is not None else None
        chosen = experts[index]
        padding = chosen.dilation * (chosen.kernel_size // 2)
        return F.conv2d(inputs, crop_kernel(bank[index], chosen), bias, stride, padding, chosen.dilation, groups)

    counts = torch.bincount(expert, minlength=bank.shape[0]).tolist()
    if max(counts) == x.shape[0]:
        return conv(x, counts.index(x.shape[0]))
    order = torch.argsort(expert, stable=True)
    runs = x.index_select(0, order).split(counts)
    out = torch.cat([conv(run, index) for index, run in enumerate(runs) if len(run)])
    return out.index_select(0, torch.argsort(order))


def capturing_graph() -> bool:
    """True while a graph is captured (ONNX export, TorchScript trace, torch.compile), where a
    branch on the data would be frozen for the example input."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def dynamic_conv2d(
        x: torch.Tensor,
        logits: torch.Tensor,
        routing: str,
        top_k: int,
        tau: float,
        bank: torch.Tensor,
        bias_bank: Optional[torch.Tensor],
        experts: Sequence[Expert],
        stride: int,
        groups: int,
) -> torch.Tensor:
    """Soft or hard routed convolution of ``x`` with a bank of ``experts``, from router ``logits`` (B, E).

    Top-1 hard routing whose weights need no gradient (inference) runs ``top1_conv2d``;
    everything else merges per-sample kernels and runs ``per_sample_conv2d``.
    """
    if routing == "hard" and top_k == 1 and not logits.requires_grad and not capturing_graph():
        return top1_conv2d(x, logits.topk(1, dim=-1).indices[:, 0], bank, bias_bank, experts, stride, groups)
    return per_sample_conv2d(x, dynamic_weights(logits, routing, top_k, tau), bank, bias_bank, stride, groups)
