"""How a routed network uses its experts on real images: per stage, overall and per class.

For hard routing the statistic is how often each expert is selected; for soft routing it
is the expert's mean weight. Both are read from the deploy form's routers with forward
hooks, so the numbers describe exactly the exported network.
"""
from __future__ import annotations

from typing import Dict, Iterable, List

import torch
import torch.nn as nn

from ..layer.deploy import DynamicMoRFConv2d


@torch.no_grad()
def routing_statistics(deployed: nn.Module, batches: Iterable, num_classes: int,
                       device: torch.device) -> List[Dict[str, object]]:
    """One entry per routed stage: experts, mode, overall usage and usage per class (rows sum to 1)."""
    stages = []
    for index, (stage, spec) in enumerate(zip(deployed.stage_modules(), deployed.arch.stages)):
        layers = [m for m in stage.modules() if isinstance(m, DynamicMoRFConv2d)]
        if layers:
            stages.append((index, spec, layers))
    if not stages:
        return []
    sums = {i: torch.zeros(num_classes, len(spec.experts), dtype=torch.float64) for i, spec, _ in stages}
    counts = torch.zeros(num_classes, dtype=torch.float64)
    labels_now: List[torch.Tensor] = []

    def hook_for(stage_index):
        def hook(module, args, output):
            weights = module.routing_weights(args[0]).detach().double().cpu()
            usage = (weights > 0).double() if module.routing == "hard" else weights
            sums[stage_index].index_add_(0, labels_now[0], usage / len(layers_of[stage_index]))
        return hook

    layers_of = {i: layers for i, _, layers in stages}
    hooks = [layer.register_forward_hook(hook_for(i)) for i, _, layers in stages for layer in layers]
    deployed.eval()
    try:
        for images, labels in batches:
            labels_now[:] = [labels.long()]
            counts.index_add_(0, labels.long(), torch.ones(len(labels), dtype=torch.float64))
            deployed(images.to(device))
    finally:
        for hook in hooks:
            hook.remove()
    result = []
    for i, spec, _ in stages:
        per_class = sums[i] / counts.clamp(min=1)[:, None]
        overall = sums[i].sum(0) / counts.sum().clamp(min=1)
        if spec.routing == "hard":  # selections per sample sum to top_k; report shares of selections
            per_class, overall = per_class / spec.top_k, overall / spec.top_k
        result.append({"stage": i, "routing": spec.routing, "top_k": spec.top_k,
                       "experts": [str(e) for e in spec.experts], "overall": overall.tolist(),
                       "per_class": per_class.tolist(), "images_per_class": counts.tolist()})
    return result
