"""MoRF models as timm models: the families, their registry and the Arch grammar they take.

``arch`` is the per-stage spec (``k3.5-soft_k7-static_...``) every entrypoint takes as
``arch=``; ``registry`` declares each family (sizes, stage count, norm, plain-timm export);
``base`` is what every family's model class shares; ``morf_convnext`` and ``morf_resnet``
are the families (importing this package registers their timm entrypoints); ``onnx`` writes
ONNX graphs of deploy forms.
"""
from .arch import Arch, StageSpec
from .morf_convnext import MoRFConvNeXt, to_plain_convnext
from .morf_resnet import MoRFResNet
from .registry import ModelFamily, get_family, list_families, register_family

for _family in list_families():  # a family added to the registry registers its timm entrypoints here too
    get_family(_family).implementation()

__all__ = ["Arch", "ModelFamily", "MoRFConvNeXt", "MoRFResNet", "StageSpec", "get_family", "list_families",
           "register_family", "to_plain_convnext"]
