"""MoRF models, registered with timm on import."""
from .morf_convnext import MoRFConvNeXt, to_plain_convnext
from .morf_resnet import MoRFResNet

__all__ = ["MoRFConvNeXt", "MoRFResNet", "to_plain_convnext"]
