"""MoRF-ConvNeXt: timm's ConvNeXt with each block's depthwise conv replaced by a MoRF layer.

The model is timm's own ``ConvNeXt`` class (subclassed, not forked), so every part of the
timm interface works: ``forward_features``, ``forward_head``, ``reset_classifier``,
``forward_intermediates``, ``features_only``, gradient checkpointing.
"""
from __future__ import annotations

from typing import Optional, Sequence

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import get_act_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.convnext import ConvNeXt
from timm.utils import reparameterize_model

from .arch import Arch, ArchLike
from .base import MoRFModelMixin, morf_from_conv

DEFAULT_ARCH = "k3.5.7-static_k3.5.7-static_k3.5.7-static_k3.5.7-static"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class MoRFConvNeXt(MoRFModelMixin, ConvNeXt):
    """ConvNeXt whose per-stage depthwise convs mix receptive fields.

    Args:
        arch: per-stage experts and routing (an ``Arch`` or its string).
        deploy: build the re-parameterized inference form directly (for loading deploy weights).
        routings: every routing mode the layers may be switched to (a supernet passes all it
            searches); by default each layer only has its stage's mode.
        tau, gumbel: router temperature and Gumbel noise for hard routing, see ``MoRFConv2d``.
        **kwargs: ``timm.models.convnext.ConvNeXt`` arguments except ``kernel_sizes``, which
            ``arch`` decides.
    """

    def __init__(self, arch: Optional[ArchLike] = None, deploy: bool = False,
                 routings: Optional[Sequence[str]] = None, tau: float = 1.0, gumbel: bool = False, **kwargs):
        if "kernel_sizes" in kwargs:
            raise ValueError("kernel_sizes: a MoRF model takes its per-stage kernels from arch=")
        self.arch = Arch.coerce(arch or DEFAULT_ARCH, num_stages=4)
        # everything timm's own ConvNeXt needs to rebuild this network's deploy form
        self.plain_args = {"conv_mlp": False, **kwargs, "kernel_sizes": tuple(s.kernel_size for s in self.arch.stages)}
        super().__init__(**self.plain_args)
        act_layer = get_act_layer(kwargs.get("act_layer", "gelu"))
        for stage, spec in zip(self.stages, self.arch.stages):
            for block in stage.blocks:
                block.conv_dw = morf_from_conv(
                    block.conv_dw, spec, bias=block.conv_dw.bias is not None, act_layer=act_layer,
                    routings=routings, tau=tau, gumbel=gumbel)
        if deploy:
            self.deploy_in_place()

    def stage_modules(self):
        return list(self.stages)

    def latency_units(self):
        units = [("stem", self.stem)]
        for stage in self.stages:
            units.append(("downsample", stage.downsample))
            units.extend(("block", block) for block in stage.blocks)
        return units + [("norm", self.norm_pre), ("head", self.head)]


def plain_convnext_name(model: MoRFConvNeXt) -> str:
    """The timm ConvNeXt entrypoint to rebuild ``model`` with: its size's, else any (all args are explicit)."""
    name = model.pretrained_cfg.get("architecture", "").replace("morf_", "", 1)
    return name if timm.is_model(name) else "convnext_atto"


def to_plain_convnext(model: MoRFConvNeXt) -> ConvNeXt:
    """The plain timm ConvNeXt equal to an all-static MoRF-ConvNeXt (deployed or not).

    Static stages deploy to ordinary depthwise convs, so timm's own model with per-stage
    ``kernel_sizes`` loads the deploy weights strictly: users can run it without morf_search.
    """
    if not model.arch.is_static:
        raise ValueError(f"arch {model.arch}: only all-static archs have a plain ConvNeXt form")
    plain = timm.create_model(plain_convnext_name(model), **model.plain_args)
    plain.load_state_dict(reparameterize_model(model).state_dict(), strict=True)
    return plain.train(model.training)


def _create(variant: str, pretrained: bool = False, **kwargs) -> MoRFConvNeXt:
    return build_model_with_cfg(
        MoRFConvNeXt, variant, pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True), **kwargs)


def _cfg(**kwargs):
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.0", "classifier": "head.fc", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    **{f"morf_convnext_{size}": _cfg() for size in ("atto", "femto", "pico", "nano", "tiny", "small", "base")},
    "morf_convnext_cifar": _cfg(num_classes=10, input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0,
                                mean=CIFAR_MEAN, std=CIFAR_STD),
})

# Depths and widths as in timm's convnext_* entrypoints.


@register_model
def morf_convnext_atto(pretrained: bool = False, **kwargs) -> MoRFConvNeXt:
    """MoRF-ConvNeXt-atto: timm convnext_atto layout with MoRF depthwise convs."""
    model_args = dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), conv_mlp=True)
    return _create("morf_convnext_atto", pretrained, **dict(model_args, **kwargs))


@register_model
def morf_convnext_femto(pretrained: bool = False, **kwargs) -> MoRFConvNeXt:
    """MoRF-ConvNeXt-femto: timm convnext_femto layout with MoRF depthwise convs."""
    model_args = dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384), conv_mlp=True)
    return _create("morf_convnext_femto", pretrained, **dict(model_args, **kwargs))


@register_model
def morf_convnext_pico(pretrained: bool = False, **kwargs) -> MoRFConvNeXt:
    """MoRF-ConvNeXt-pico: timm convnext_pico layout with MoRF depthwise convs."""
    model_args = dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512), conv_mlp=True)
    return _create("morf_convnext_pico", pretrained, **dict(model_args, **kwargs))


@register_model
def morf_convnext_nano(pretrained: bool = False, **kwargs) -> MoRFConvNeXt:
    """MoRF-ConvNeXt-nano: timm convnext_nano layout with MoRF depthwise convs."""
    model_args = dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640), conv_mlp=True)
    return _create("morf_convnext_nano", pretrained, **dict(model_args, **kwargs))


@register_model
def morf_convnext_tiny(pretrained: bool = False, **kwargs) -> MoRFConvNeXt:
    """MoRF-ConvNeXt-tiny: timm convnext_tiny layout with MoRF depthwise convs."""
    model_args = dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))
    return _create("morf_convnext_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def morf_convnext_small(pretrained: bool = False, **kwargs) -> MoRFConvNeXt:
    """MoRF-ConvNeXt-small: timm convnext_small layout with MoRF depthwise convs."""
    model_args = dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768))
    return _create("morf_convnext_small", pretrained, **dict(model_args, **kwargs))


@register_model
def morf_convnext_base(pretrained: bool = False, **kwargs) -> MoRFConvNeXt:
    """MoRF-ConvNeXt-base: timm convnext_base layout with MoRF depthwise convs."""
    model_args = dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024))
    return _create("morf_convnext_base", pretrained, **dict(model_args, **kwargs))


@register_model
def morf_convnext_cifar(pretrained: bool = False, **kwargs) -> MoRFConvNeXt:
    """MoRF-ConvNeXt for 32-64 px images: a 1x1 stem keeps full resolution in stage 0, where kernel size matters most."""
    model_args = dict(depths=(2, 2, 2, 2), dims=(32, 64, 128, 256), patch_size=1, conv_mlp=True)
    return _create("morf_convnext_cifar", pretrained, **dict(model_args, **kwargs))
