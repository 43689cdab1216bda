"""What MoRF-ConvNeXt and MoRF-ResNet share: swapping timm convs for MoRF layers per stage."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch.nn as nn
from timm.utils import reparameterize_model

from ..layer.morf_conv import MoRFConv2d, morf_layers
from .arch import Arch, StageSpec


def morf_from_conv(conv: nn.Conv2d, spec: StageSpec, *, bias: bool, act_layer: type,
                   routings: Optional[Sequence[str]], tau: float, gumbel: bool) -> MoRFConv2d:
    """A MoRF layer with the geometry (channels, stride, groups) of the timm conv it replaces."""
    if tuple(conv.dilation) != (1, 1):
        raise ValueError("output_stride: MoRF models support output_stride=32 only (no dilated stages)")
    return MoRFConv2d(
        conv.in_channels, conv.out_channels, spec.experts, spec.routing, stride=conv.stride[0],
        groups=conv.groups, top_k=spec.top_k, bias=bias, tau=tau, gumbel=gumbel,
        routings=routings, router_act=act_layer)


class MoRFModelMixin:
    """Arch bookkeeping for a timm model whose per-stage convs are MoRF layers.

    ``arch`` (an ``Arch``) is a plain attribute, not a class annotation, so that TorchScript,
    which types annotated attributes, leaves it out: forward never reads it.
    """

    def stage_modules(self) -> List[nn.Module]:
        raise NotImplementedError

    def latency_units(self) -> List[Tuple[str, nn.Module]]:
        """``(kind, module)`` in execution order whose forwards together make the network's.

        The latency predictor times each distinct unit once and sums them per arch.
        """
        raise NotImplementedError

    def set_arch(self, arch) -> None:
        """Activate, in every stage, the experts and routing that ``arch`` names (supernet use).

        Each stage's layers must hold the named experts and have been built with the routing
        modes among their ``routings``.
        """
        arch = Arch.coerce(arch, len(self.arch))
        for stage, spec in zip(self.stage_modules(), arch.stages):
            layers = morf_layers(stage)
            if not layers:
                raise ValueError("set_arch: this model is deployed; its archs are fixed")
            for layer in layers:
                layer.set_active(spec.experts, spec.routing, spec.top_k)
        self.arch = arch

    def deploy_in_place(self) -> None:
        """Swap every MoRF layer for its deploy form (timm's reparameterize_model, in place)."""
        reparameterize_model(self, inplace=True)
