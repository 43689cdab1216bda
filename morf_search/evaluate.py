"""One-shot evaluation: score any arch of the space with weights inherited from the supernet.

Each candidate is activated in the supernet, re-parameterized into its deploy form (which
gives the same outputs and is faster) and scored on the validation images; params and
FLOPs are those of the deploy form, the network a user would run. ResNet subnets first
re-estimate their BatchNorm statistics, which the shared weights do not fit; ConvNeXt uses
LayerNorm and needs nothing.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.utils import reparameterize_model
from torch.utils.data import DataLoader

from .arch import Arch
from .config import SpaceFile
from .cost import count_flops, count_params
from .data import DataSplits, make_loader
from .supernet import SuperNet

Batches = Sequence[Tuple[torch.Tensor, torch.Tensor]]


def cache_batches(loader: DataLoader, max_batches: Optional[int] = None, max_bytes: int = 512 << 20):
    """Materialize a loader's (deterministic) batches once, if they fit in ``max_bytes``.

    Evaluating hundreds of candidates on the same images would otherwise decode and
    transform them hundreds of times; loaders too large to hold are returned unchanged.
    """
    batch_bytes = 4 * loader.batch_size * int(torch.tensor(loader.dataset[0][0].shape).prod())
    count = len(loader) if max_batches is None else min(max_batches, len(loader))
    if count * batch_bytes > max_bytes:
        return loader
    batches = []
    for index, batch in enumerate(loader):
        if index >= count:
            break
        batches.append(batch)
    return batches


@torch.no_grad()
def top1_accuracy(model: nn.Module, batches: Iterable, device: torch.device) -> float:
    model.eval()
    correct = total = 0
    for images, targets in batches:
        predictions = model(images.to(device)).argmax(1).cpu()
        correct += int((predictions == targets).sum())
        total += len(targets)
    return 100.0 * correct / max(total, 1)


def _batchnorms(model: nn.Module) -> List[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def preserved_batchnorm(model: nn.Module):
    """Restore BatchNorm statistics afterwards, so evaluating one arch cannot disturb the next."""
    saved = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum)
             for m in _batchnorms(model)]
    try:
        yield
    finally:
        for module, mean, var, tracked, momentum in saved:
            module.running_mean.copy_(mean)
            module.running_var.copy_(var)
            module.num_batches_tracked.copy_(tracked)
            module.momentum = momentum


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable, device: torch.device) -> None:
    """Re-estimate BatchNorm statistics of the active sub-network as exact averages over ``batches``."""
    norms = _batchnorms(model)
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # cumulative average
    model.train()
    for images, _ in batches:
        model(images.to(device))
    model.eval()


class OneShotEvaluator:
    """``arch -> {accuracy, params, flops[, latency_ms]}`` from inherited supernet weights."""

    def __init__(self, supernet: SuperNet, splits: DataSplits, config: SpaceFile, device: torch.device,
                 latency: Optional[Callable[[nn.Module, Arch], float]] = None):
        data = config.data
        self.supernet, self.device, self.latency = supernet, device, latency
        self.input_size = (3, data.image_size, data.image_size)
        self.val = cache_batches(make_loader(splits.val, data.batch_size, data.workers, shuffle=False,
                                             limit=config.search.eval_images))
        self.calibration: Batches = []
        if supernet.family == "resnet":
            self.calibration = cache_batches(
                make_loader(splits.calibration, data.batch_size, data.workers, shuffle=True, seed=config.seed),
                max_batches=config.supernet.bn_calibration_batches)

    def deploy(self, arch: Arch) -> nn.Module:
        """The arch's re-parameterized network with inherited (and, for ResNet, recalibrated) weights."""
        model = self.supernet.activate(arch)
        with preserved_batchnorm(model):
            if self.calibration:
                recalibrate_batchnorm(model, self.calibration, self.device)
            return reparameterize_model(model.eval())

    def __call__(self, arch: Arch) -> Dict[str, float]:
        deployed = self.deploy(arch)
        result = {
            "accuracy": top1_accuracy(deployed, self.val, self.device),
            "params": count_params(deployed),
            "flops": count_flops(deployed, self.input_size),
        }
        if self.latency is not None:
            result["latency_ms"] = self.latency(deployed, arch)
        return result
