"""MoRF-ResNet: timm's ResNet with each block's 3x3 conv replaced by a MoRF layer.

Bottleneck blocks have one spatial conv (``conv2``); basic blocks have two (``conv1`` and
``conv2``) and both become MoRF layers with the stage's spec. The block's BatchNorm after
each conv is shared by all experts, so experts carry no bias (the norm would cancel it).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import get_act_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from .arch import Arch, ArchLike
from .base import MoRFModelMixin, morf_from_conv
from .morf_convnext import CIFAR_MEAN, CIFAR_STD

DEFAULT_ARCH = "k1.3-static_k1.3-static_k1.3-static_k1.3-static"


class MoRFResNet(MoRFModelMixin, ResNet):
    """ResNet whose per-stage 3x3 convs mix receptive fields.

    Args:
        arch, deploy, routings, tau, gumbel: as for ``MoRFConvNeXt``.
        small_input: a 3x3 stride-1 stem without max-pool, for 32-64 px images, so stage 1
            runs at full resolution where receptive-field choices matter.
        **kwargs: ``timm.models.resnet.ResNet`` arguments (``block``, ``layers``, ``channels``, ...).
    """

    def __init__(self, arch: Optional[ArchLike] = None, deploy: bool = False, small_input: bool = False,
                 routings: Optional[Sequence[str]] = None, tau: float = 1.0, gumbel: bool = False, **kwargs):
        self.arch = Arch.coerce(arch or DEFAULT_ARCH, num_stages=len(kwargs["layers"]))
        super().__init__(**kwargs)
        if small_input:
            self._keep_input_resolution(kwargs.get("in_chans", 3))
        act_layer = get_act_layer(kwargs.get("act_layer", nn.ReLU))
        for stage, spec in zip(self.stage_modules(), self.arch.stages):
            for block in stage:
                for name in ("conv2",) if isinstance(block, Bottleneck) else ("conv1", "conv2"):
                    setattr(block, name, morf_from_conv(
                        getattr(block, name), spec, bias=False, act_layer=act_layer,
                        routings=routings, tau=tau, gumbel=gumbel))
        if deploy:
            self.deploy_in_place()

    def stage_modules(self):
        return [getattr(self, f"layer{i + 1}") for i in range(len(self.arch))]

    def latency_units(self):
        units = [("stem", m) for m in (self.conv1, self.bn1, self.act1, self.maxpool)]
        units.extend(("block", block) for stage in self.stage_modules() for block in stage)
        return units + [("pool", self.global_pool), ("head", self.fc)]

    def _keep_input_resolution(self, in_chans: int) -> None:
        stem_width = self.bn1.num_features
        self.conv1 = nn.Conv2d(in_chans, stem_width, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = nn.Identity()
        for info, reduction in zip(self.feature_info, (1, 1, 2, 4, 8)):
            info["reduction"] = reduction


def _create(variant: str, pretrained: bool = False, **kwargs) -> MoRFResNet:
    return build_model_with_cfg(MoRFResNet, variant, pretrained, **kwargs)


def _cfg(**kwargs):
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bilinear", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1", "classifier": "fc", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "morf_resnet18": _cfg(), "morf_resnet26": _cfg(), "morf_resnet50": _cfg(),
    "morf_resnet_cifar": _cfg(num_classes=10, input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0,
                              mean=CIFAR_MEAN, std=CIFAR_STD),
})

# Block types and depths as in timm's resnet* entrypoints.


@register_model
def morf_resnet18(pretrained: bool = False, **kwargs) -> MoRFResNet:
    """MoRF-ResNet18: timm resnet18 layout with MoRF 3x3 convs."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return _create("morf_resnet18", pretrained, **dict(model_args, **kwargs))


@register_model
def morf_resnet26(pretrained: bool = False, **kwargs) -> MoRFResNet:
    """MoRF-ResNet26: timm resnet26 layout with MoRF 3x3 convs."""
    model_args = dict(block=Bottleneck, layers=(2, 2, 2, 2))
    return _create("morf_resnet26", pretrained, **dict(model_args, **kwargs))


@register_model
def morf_resnet50(pretrained: bool = False, **kwargs) -> MoRFResNet:
    """MoRF-ResNet50: timm resnet50 layout with MoRF 3x3 convs."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3))
    return _create("morf_resnet50", pretrained, **dict(model_args, **kwargs))


@register_model
def morf_resnet_cifar(pretrained: bool = False, **kwargs) -> MoRFResNet:
    """MoRF-ResNet for 32-64 px images: basic blocks, narrow stages, a 3x3 stride-1 stem without max-pool."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2), channels=(32, 64, 128, 256), small_input=True)
    return _create("morf_resnet_cifar", pretrained, **dict(model_args, **kwargs))
