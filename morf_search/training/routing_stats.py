"""How a routed network uses its experts on real images: per stage, overall and per class.

A ``RoutingRecorder`` hooks the routed layers of a network, in training form (a supernet's
``MoRFConv2d`` switched to soft or hard routing) or deploy form (``DynamicMoRFConv2d``),
and accumulates while the network runs: for hard routing how often each expert is
selected, for soft routing the expert's mean weight. Its summary gives per stage each
expert's share, the entropy of those shares (1 = used evenly, 0 = one expert only) and a
flag when the stage is a static layer in disguise: a hard router that sends more than 90 %
of its selections to the same top-k experts, or soft weights that barely move from uniform
or barely change from one input to the next.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional

import torch
import torch.nn as nn
from typing_extensions import NotRequired, TypedDict

from ..layer.routing import DYNAMIC_MODES

COLLAPSE_SHARE = 0.9  # a hard-routed stage sending more than this share of selections to its top-k is flagged
UNIFORM_DEVIATION = 0.05  # soft weights within this of 1/E (mean over samples of the largest gap) are flagged
INPUT_SPREAD = 0.02  # soft weights whose standard deviation over samples stays below this are flagged


def routed_layers(module: nn.Module) -> List[nn.Module]:
    """The layers of ``module`` that currently route per input (soft or hard), either form."""
    return [m for m in module.modules() if hasattr(m, "routing_weights") and getattr(m, "routing", None) in DYNAMIC_MODES]


class RoutingRecorder:
    """Accumulates expert usage of a network's routed stages while it runs (a context manager).

    Set ``labels`` before each forward to also collect usage per class.
    """

    def __init__(self, model: nn.Module, num_classes: Optional[int] = None):
        self.model, self.num_classes = model, num_classes
        self.labels: Optional[torch.Tensor] = None
        self.stages = []
        for index, (stage, spec) in enumerate(zip(model.stage_modules(), model.arch.stages)):
            layers = routed_layers(stage)
            if layers:
                self.stages.append((index, spec, layers))
        experts = {index: len(spec.experts) for index, spec, _ in self.stages}
        self.sums = {i: torch.zeros(num_classes or 1, e, dtype=torch.float64) for i, e in experts.items()}
        self.deviation = {i: 0.0 for i in experts}
        self.squares = {i: torch.zeros(e, dtype=torch.float64) for i, e in experts.items()}
        self.counts = torch.zeros(num_classes or 1, dtype=torch.float64)
        self._hooks = []

    def __enter__(self) -> "RoutingRecorder":
        for index, _, layers in self.stages:
            for layer in layers:
                self._hooks.append(layer.register_forward_hook(self._hook(index, len(layers))))
        if self.stages:
            self._hooks.append(self.model.register_forward_pre_hook(self._count))
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _rows(self, batch: int) -> torch.Tensor:
        if self.num_classes and self.labels is not None:
            return self.labels.long().cpu()
        return torch.zeros(batch, dtype=torch.long)

    def _count(self, module, args):
        batch = args[0].shape[0]
        self.counts.index_add_(0, self._rows(batch), torch.ones(batch, dtype=torch.float64))

    def _hook(self, stage: int, layers: int):
        @torch.no_grad()
        def hook(module, args, output):
            weights = module.routing_weights(args[0]).detach().double().cpu()
            usage = (weights > 0).double() / module.top_k if module.routing == "hard" else weights
            self.sums[stage].index_add_(0, self._rows(len(weights)), usage / layers)
            gap = (weights - 1.0 / weights.shape[1]).abs().max(1).values.sum().item()
            self.deviation[stage] += gap / layers
            self.squares[stage] += (weights ** 2).sum(0) / layers
        return hook

    def summary(self) -> List["StageRouting"]:
        """One entry per routed stage: experts, mode, share (overall and per class), entropy, flag."""
        result = []
        seen = self.counts.sum().clamp(min=1)
        for index, spec, _ in self.stages:
            overall = (self.sums[index].sum(0) / seen).tolist()
            entry = {"stage": index, "routing": spec.routing, "top_k": spec.top_k,
                     "experts": [str(e) for e in spec.experts], "overall": overall,
                     "entropy": normalized_entropy(overall), "flag": ""}
            top = sorted(range(len(overall)), key=overall.__getitem__)[-spec.top_k:]
            spread = float((self.squares[index] / seen - torch.tensor(overall) ** 2).clamp(min=0).sqrt().max())
            if spec.routing == "hard" and sum(overall[i] for i in top) > COLLAPSE_SHARE:
                experts = "+".join(str(spec.experts[i]) for i in sorted(top))
                entry["flag"] = (f"stage {index} routes {sum(overall[i] for i in top):.0%} of its selections to "
                                 f"expert {experts}: a static layer in disguise")
            elif spec.routing == "soft" and self.deviation[index] / float(seen) < UNIFORM_DEVIATION:
                entry["flag"] = (f"stage {index}'s soft weights stay within {UNIFORM_DEVIATION} of uniform: "
                                 "a fixed average of its experts, not input-adaptive")
            elif spec.routing == "soft" and spread < INPUT_SPREAD:
                entry["flag"] = (f"stage {index}'s soft weights hardly change between inputs (std {spread:.3f}): "
                                 "a fixed mix of its experts, not input-adaptive")
            if self.num_classes:
                entry["per_class"] = (self.sums[index] / self.counts.clamp(min=1)[:, None]).tolist()
                entry["images_per_class"] = self.counts.tolist()
            result.append(entry)
        return result


class StageRouting(TypedDict):
    """One routed stage's entry of a summary (a finalist's routing.json), as the report reads it."""

    stage: int
    routing: str
    top_k: int
    experts: List[str]
    overall: List[float]
    entropy: float
    flag: str
    per_class: NotRequired[List[List[float]]]
    images_per_class: NotRequired[List[int]]


def normalized_entropy(shares: List[float]) -> float:
    """Entropy of a usage distribution divided by its maximum: 1 when even, 0 when one expert takes all."""
    if len(shares) < 2:
        return 0.0
    total = sum(shares) or 1.0
    return max(0.0, -sum(p / total * math.log(p / total) for p in shares if p > 0) / math.log(len(shares)))


@torch.no_grad()
def routing_statistics(model: nn.Module, batches: Iterable, num_classes: int,
                       device: torch.device) -> List[Dict[str, object]]:
    """Usage of ``model``'s routed stages on ``batches``, overall and per class (rows sum to 1)."""
    model.eval()
    with RoutingRecorder(model, num_classes) as recorder:
        for images, labels in batches:
            recorder.labels = labels
            model(images.to(device))
    return recorder.summary()
