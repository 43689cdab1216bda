"""morf-search: neural architecture search over Mixture-of-Receptive-Fields ConvNets."""
from importlib.metadata import PackageNotFoundError, version

from .arch import Arch, StageSpec
from .deploy import DynamicMoRFConv2d
from .experts import Expert
from .layer import MoRFConv2d, morf_layers, total_balance_loss
from .models import MoRFConvNeXt, MoRFResNet, to_plain_convnext  # registers the timm models

try:
    __version__ = version("morf-search")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Arch", "DynamicMoRFConv2d", "Expert", "MoRFConv2d", "MoRFConvNeXt", "MoRFResNet", "StageSpec",
    "morf_layers", "to_plain_convnext", "total_balance_loss", "__version__",
]
