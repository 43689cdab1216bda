"""morf-search: neural architecture search over Mixture-of-Receptive-Fields ConvNets.

The package reads as the pipeline: ``layer`` (the MoRF layer), ``models`` (timm families and
their registry), ``space`` (space file and search space), ``training`` (data, supernet,
training loop, evaluation), ``latency`` (harness, backends, lookup table), ``search``
(trial runner, engines, trial log, Pareto), ``finalists`` (fine-tune, verify, export) and
``report``; on top, ``rundir`` (a run's files), ``context`` (what a run's phases share),
``phases`` (``morf-search run``), ``cli`` and ``api`` (``Search(space).fit()``, ``load_run``).

The API's names are imported on first use, so that ``import morf_search`` (which timm needs to
load an export) stays as light as the models.
"""
import importlib
from importlib.metadata import PackageNotFoundError, version

from .layer import DynamicMoRFConv2d, Expert, MoRFConv2d, morf_layers, total_balance_loss
from .models import Arch, MoRFConvNeXt, MoRFResNet, StageSpec, to_plain_convnext  # registers the timm models

try:
    __version__ = version("morf-search")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_API = {"Search": "api", "SearchResults": "api", "load_run": "api", "CustomData": "training.data",
        "ModelFamily": "models.registry", "register_family": "models.registry", "SpaceFile": "space.schema",
        "parse_space": "space.schema", "load_space": "space.schema"}


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    *_API, "Arch", "DynamicMoRFConv2d", "Expert", "MoRFConv2d", "MoRFConvNeXt", "MoRFResNet", "StageSpec",
    "morf_layers", "to_plain_convnext", "total_balance_loss", "__version__",
]
