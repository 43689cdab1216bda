"""Routing: how a MoRF layer weights its experts for each input.

``static`` weights are learned per expert and channel and ignore the input; ``soft`` and
``hard`` weights come per sample from a small router. The functions here are shared by
the training form and the deploy form so both route identically.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

ROUTING_MODES: Tuple[str, ...] = ("static", "soft", "hard")
DYNAMIC_MODES: Tuple[str, ...] = ("soft", "hard")


def check_routing(routing: str, name: str = "routing") -> str:
    if routing not in ROUTING_MODES:
        raise ValueError(f"{name}: unknown routing {routing!r}; expected one of {', '.join(ROUTING_MODES)}")
    return routing


def check_top_k(top_k: int, num_experts: int, name: str = "top_k") -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"{name}: must be a positive integer, got {top_k!r}")
    if top_k > num_experts:
        raise ValueError(f"{name}: {top_k} is larger than the number of active experts ({num_experts})")
    return top_k


class Router(nn.Module):
    """Global average pool -> 1x1 -> act -> 1x1 to one logit per expert.

    On pooled features a 1x1 convolution is a linear layer, so linear layers are used.
    """

    def __init__(self, in_channels: int, num_experts: int, hidden: int, act_layer: type = nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(in_channels, hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x.mean((2, 3)))))


def soft_weights(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-sample softmax over experts at temperature ``tau``."""
    return F.softmax(logits / tau, dim=-1)


def hard_weights(logits: torch.Tensor, top_k: int, tau: float) -> torch.Tensor:
    """Top-k routing with a straight-through softmax.

    The value is the softmax renormalized over each sample's top-k experts (zero elsewhere),
    so unselected experts get no gradient; the gradient reaching the logits is that of the
    full softmax, so the router learns about every expert.
    """
    probs = F.softmax(logits / tau, dim=-1)
    top_logits, top_index = logits.topk(top_k, dim=-1)
    selected = torch.zeros_like(probs).scatter(-1, top_index, F.softmax(top_logits / tau, dim=-1))
    return selected.detach() + probs - probs.detach()


def gumbel_perturb(logits: torch.Tensor) -> torch.Tensor:
    """Add Gumbel(0, 1) noise: top-k of the result samples experts in proportion to softmax."""
    uniform = torch.rand_like(logits).clamp_(1e-9, 1.0 - 1e-9)
    return logits - torch.log(-torch.log(uniform))


def load_balance_loss(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Switch-Transformer auxiliary loss ``E * sum_e f_e * P_e``.

    ``f_e`` is the fraction of top-k selections that went to expert ``e`` in this batch and
    ``P_e`` its mean router probability; the loss is 1 when routing is uniform and grows as
    the batch collapses onto few experts.
    """
    num_experts = logits.shape[-1]
    probs = F.softmax(logits, dim=-1)
    chosen = F.one_hot(logits.topk(top_k, dim=-1).indices, num_experts).sum(1).float()
    fraction = chosen.mean(0) / top_k
    return num_experts * (fraction * probs.mean(0)).sum()


def dynamic_weights(logits: torch.Tensor, routing: str, top_k: int, tau: float) -> torch.Tensor:
    """Per-sample expert weights (B, E) for the ``soft`` or ``hard`` mode."""
    if routing == "soft":
        return soft_weights(logits, tau)
    return hard_weights(logits, top_k, tau)
