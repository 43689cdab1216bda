"""Pure tensor math behind MoRF: placing expert kernels on a common grid and mixing them.

Convolution is linear in its weight, so ``sum_e w_e (K_e * x) == (sum_e w_e pad(K_e)) * x``
where ``pad`` dilates a kernel and centres it in the largest active window. Everything
here is differentiable and free of ``nn.Module`` state so the training form and the
deploy form share one implementation. The functions are TorchScript-compatible (experts
come as plain lists of kernel sizes and dilations), so scripted models run this same code.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from .routing import dynamic_weights


def span(kernel_size: int, dilation: int) -> int:
    """Side of the window a ``kernel_size`` kernel covers at ``dilation`` (``Expert.span``)."""
    return dilation * (kernel_size - 1) + 1


def place_kernel(weight: torch.Tensor, kernel_size: int, dilation: int, size: int) -> torch.Tensor:
    """Dilate ``weight`` (..., k, k) by ``dilation`` and centre it in a ``size`` window."""
    side = span(kernel_size, dilation)
    if size < side or (size - side) % 2:
        raise ValueError(f"cannot centre a {side}x{side} kernel in a {size}x{size} window")
    if dilation > 1:
        dilated = weight.new_zeros(list(weight.shape[:-2]) + [side, side])
        dilated[..., ::dilation, ::dilation] = weight
        weight = dilated
    margin = (size - side) // 2
    return F.pad(weight, [margin, margin, margin, margin]) if margin else weight


def crop_kernel(placed: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """The expert's own (..., k, k) kernel back out of its ``place_kernel`` window."""
    margin = (placed.shape[-1] - span(kernel_size, dilation)) // 2
    window = placed[..., margin:placed.shape[-1] - margin, margin:placed.shape[-1] - margin]
    return window[..., ::dilation, ::dilation]


def stack_kernels(weights: List[torch.Tensor], kernel_sizes: List[int], dilations: List[int]) -> torch.Tensor:
    """Stack expert kernels into one bank (E, out, in/groups, K, K), K the largest span."""
    size = max([span(kernel_sizes[i], dilations[i]) for i in range(len(weights))])
    return torch.stack([place_kernel(weights[i], kernel_sizes[i], dilations[i], size) for i in range(len(weights))])


def mix_static(bank: torch.Tensor, bias_bank: Optional[torch.Tensor], mix: torch.Tensor
               ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
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
    batch, channels = x.shape[0], x.shape[1]
    num_experts, out_channels = bank.shape[0], bank.shape[1]
    kernel = torch.mm(mix, bank.reshape(num_experts, -1)).reshape([batch * out_channels] + list(bank.shape[2:]))
    bias = torch.mm(mix, bias_bank).reshape(-1) if bias_bank is not None else None
    folded = x.reshape([1, batch * channels] + list(x.shape[2:]))
    out = F.conv2d(folded, kernel, bias, stride, bank.shape[-1] // 2, 1, groups * batch)
    return out.reshape([batch, out_channels] + list(out.shape[2:]))


def expert_conv2d(x: torch.Tensor, bank: torch.Tensor, bias_bank: Optional[torch.Tensor], index: int,
                  kernel_size: int, dilation: int, stride: int, groups: int) -> torch.Tensor:
    """``x`` convolved with expert ``index`` of the bank alone, at its own size and dilation."""
    bias = bias_bank[index] if bias_bank is not None else None
    padding = dilation * (kernel_size // 2)
    return F.conv2d(x, crop_kernel(bank[index], kernel_size, dilation), bias, stride, padding, dilation, groups)


def top1_conv2d(
        x: torch.Tensor,
        expert: torch.Tensor,
        bank: torch.Tensor,
        bias_bank: Optional[torch.Tensor],
        kernel_sizes: List[int],
        dilations: List[int],
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
    counts: List[int] = torch.bincount(expert, minlength=bank.shape[0]).tolist()
    batch = x.shape[0]
    if max(counts) == batch:
        only = counts.index(batch)
        return expert_conv2d(x, bank, bias_bank, only, kernel_sizes[only], dilations[only], stride, groups)
    order = torch.argsort(expert, stable=True)
    runs = x.index_select(0, order).split(counts)
    outputs: List[torch.Tensor] = []
    for index in range(len(counts)):
        if counts[index]:
            outputs.append(expert_conv2d(runs[index], bank, bias_bank, index, kernel_sizes[index], dilations[index],
                                         stride, groups))
    return torch.cat(outputs).index_select(0, torch.argsort(order))


@torch.jit.unused
def _capturing_eager_graph() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def capturing_graph() -> bool:
    """True while a graph is captured (ONNX export, TorchScript trace, torch.compile), where a
    branch on the data would be frozen for the example input. A scripted model keeps its
    branches, so it is not capturing in this sense."""
    if torch.jit.is_scripting():
        return False
    return _capturing_eager_graph()


def dynamic_conv2d(
        x: torch.Tensor,
        logits: torch.Tensor,
        routing: str,
        top_k: int,
        tau: float,
        bank: torch.Tensor,
        bias_bank: Optional[torch.Tensor],
        kernel_sizes: List[int],
        dilations: List[int],
        stride: int,
        groups: int,
) -> torch.Tensor:
    """Soft or hard routed convolution of ``x`` with a bank of experts, from router ``logits`` (B, E).

    Top-1 hard routing whose weights need no gradient (inference) runs ``top1_conv2d``;
    everything else merges per-sample kernels and runs ``per_sample_conv2d``.
    """
    if routing == "hard" and top_k == 1 and not logits.requires_grad and not capturing_graph():
        return top1_conv2d(x, logits.topk(1, dim=-1).indices[:, 0], bank, bias_bank, kernel_sizes, dilations,
                           stride, groups)
    return per_sample_conv2d(x, dynamic_weights(logits, routing, top_k, tau), bank, bias_bank, stride, groups)
