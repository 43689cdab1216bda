"""SuperNet: one MoRF model whose layers hold every candidate expert of a search space.

``activate(arch)`` selects, per stage, the arch's experts and routing mode; every sub-arch
therefore inherits the shared weights. Training samples archs per step, uniformly or by
the sandwich rule (largest, smallest and a random arch every step), optionally with the
largest arch as an in-place teacher and with the widest expert sets first.
"""
from __future__ import annotations

import copy
import random
from typing import List

import torch
import torch.nn as nn

from ..layer.morf_conv import MoRFConv2d
from ..models.arch import Arch
from ..space.search_space import SearchSpace


class SuperNet:
    """A search space's weight-sharing model and the rules for walking its sub-archs."""

    def __init__(self, space: SearchSpace, num_classes: int, device: torch.device = torch.device("cpu")):
        self.space = space
        self.model: nn.Module = space.build_supernet(num_classes).to(device)  # the space file checked it builds

    def activate(self, arch: Arch) -> nn.Module:
        """Switch the shared model to ``arch`` (which must belong to the space) and return it."""
        if arch not in self.space:
            raise ValueError(f"arch {arch}: not in this search space")
        self.model.set_arch(arch)
        return self.model

    def extract(self, arch: Arch) -> nn.Module:
        """A standalone training-form model of ``arch`` that inherits the supernet's weights.

        Its state dict loads strictly into ``timm.create_model(name, arch=arch)``; used to
        fine-tune finalists from where the supernet left them.
        """
        self.activate(arch)
        model = copy.deepcopy(self.model)
        for parent in list(model.modules()):
            for name, child in parent.named_children():
                if isinstance(child, MoRFConv2d):
                    setattr(parent, name, child.extract_active())
        model.arch = arch
        return model

    def sample(self, rng: random.Random, rule: str = "uniform", teacher: bool = False,
               widest_only: bool = False) -> List[Arch]:
        """The archs one training step trains: one uniform sample, or the sandwich's three.

        ``teacher`` puts the largest arch first (in-place distillation needs it every step);
        ``widest_only`` samples only the stages' largest expert sets (progressive shrinking).
        """
        sample = self.space.sample(rng, widest_only=widest_only)
        if rule == "sandwich":
            smallest = self.space.smallest() if not widest_only else self.space.sample(rng, widest_only=True)
            return [self.space.largest(), smallest, sample]
        return [self.space.largest(), sample] if teacher else [sample]

    def sampler(self, config):
        """``(rng, epoch) -> archs`` for the training loop, as a space file's ``supernet`` section asks."""
        def sample(rng: random.Random, epoch: int) -> List[Arch]:
            return self.sample(rng, config.sampling, teacher=config.distillation,
                               widest_only=epoch < config.widest_first_epochs)
        return sample
