"""One-shot evaluation: score any arch of the space with weights inherited from the supernet.

Each candidate is activated in the supernet, re-parameterized into its deploy form (which
gives the same outputs and is faster) and scored on the validation images. Sub-networks of a family
with BatchNorm (ResNet) first re-estimate their statistics, which the shared weights do not
fit; LayerNorm (ConvNeXt) needs nothing.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.utils import reparameterize_model
from torch.utils.data import DataLoader

from ..models.arch import Arch
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
def top1_accuracy(model: nn.Module, batches: Iterable, device: torch.device, recorder=None) -> float:
    """Top-1 accuracy (%) on ``batches``; a ``RoutingRecorder`` given is told each batch's labels."""
    model.eval()
    correct = total = 0
    for images, targets in batches:
        if recorder is not None:
            recorder.labels = targets
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
    """Any arch of the space in deploy form, with weights inherited from the trained supernet.

    ``calibration`` holds the batches that re-estimate BatchNorm statistics per arch; it is
    empty for families without BatchNorm.
    """

    def __init__(self, supernet: SuperNet, val: Batches, calibration: Batches, device: torch.device):
        self.supernet, self.val, self.calibration, self.device = supernet, val, calibration, device

    def deploy(self, arch: Arch) -> nn.Module:
        """The arch's re-parameterized network with inherited (and, under BatchNorm, recalibrated) weights."""
        model = self.supernet.activate(arch)
        with preserved_batchnorm(model):
            if self.calibration:
                recalibrate_batchnorm(model, self.calibration, self.device)
            return reparameterize_model(model.eval())

    def accuracy(self, arch: Arch) -> float:
        """Top-1 accuracy (%) of the arch's deploy form on the validation batches."""
        return top1_accuracy(self.deploy(arch), self.val, self.device)
