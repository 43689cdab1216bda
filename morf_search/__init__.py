"""morf-search: neural architecture search over Mixture-of-Receptive-Fields ConvNets.

The package reads as the pipeline: ``layer`` (the MoRF layer), ``models`` (timm families and
their registry), ``space`` (space file and search space), ``training`` (data, supernet,
training loop, evaluation), ``latency`` (harness, backends, lookup table), ``search``
(trial runner, engines, trial log, Pareto), ``finalists`` (fine-tune, verify, export) and
``report``; on top, ``rundir`` (a run's files), ``context`` (what a run's phases share),
``phases`` (``morf-search run``) and ``cli``.
"""
from importlib.metadata import PackageNotFoundError, version

from .layer import DynamicMoRFConv2d, Expert, MoRFConv2d, morf_layers, total_balance_loss
from .models import Arch, MoRFConvNeXt, MoRFResNet, StageSpec, to_plain_convnext  # registers the timm models

try:
    __version__ = version("morf-search")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Arch", "DynamicMoRFConv2d", "Expert", "MoRFConv2d", "MoRFConvNeXt", "MoRFResNet", "StageSpec",
    "morf_layers", "to_plain_convnext", "total_balance_loss", "__version__",
]
