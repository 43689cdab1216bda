"""The model-family registry: what the rest of morf-search may know about a MoRF family.

A family is one file under ``models/`` (a timm model class whose per-stage convs are MoRF
layers, and its ``@register_model`` entrypoints) plus one ``ModelFamily`` entry here. The
entry is declarative: it names the family's sizes and their timm entrypoints, its stage
count, the keyword arguments that reshape it, which norm follows its MoRF layers, its
default kernel, and the function (if any) that turns an all-static network into plain
timm. The space file's schema validates against these entries alone, without importing the
implementations; importing ``morf_search.models`` imports every registered family's module,
which registers its timm entrypoints.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple


@dataclass(frozen=True)
class ModelFamily:
    """One MoRF model family, as the schema, training and export see it."""

    name: str
    module: str  # the implementation, imported on first use (it registers the timm entrypoints)
    entrypoints: Mapping[str, str]  # size -> timm model name
    num_stages: int
    depth_arg: str  # timm keyword for blocks per stage
    width_arg: str  # timm keyword for channels per stage
    norm: str  # "batch" or "layer": what follows each MoRF layer
    default_kernel: int  # the family's own network uses this kernel in every stage (the baseline)
    plain_export: Optional[str] = None  # name of module's function: all-static model -> plain timm model

    @property
    def sizes(self) -> Tuple[str, ...]:
        return tuple(self.entrypoints)

    @property
    def uses_batchnorm(self) -> bool:
        """Sub-networks of a weight-sharing supernet need their BatchNorm statistics re-estimated."""
        return self.norm == "batch"

    def timm_name(self, size: str) -> str:
        return self.entrypoints[size]

    def implementation(self):
        """The family's module, imported (and its entrypoints registered with timm) on first use."""
        return importlib.import_module(self.module)

    def to_plain(self) -> Optional[Callable]:
        """The function that rebuilds an all-static model as plain timm, or None."""
        return getattr(self.implementation(), self.plain_export) if self.plain_export else None


_FAMILIES: Dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add a family (a later entry of the same name replaces the earlier one)."""
    _FAMILIES[family.name] = family
    return family


def get_family(name: str) -> ModelFamily:
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family {name!r}; expected one of {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def list_families() -> Tuple[str, ...]:
    return tuple(_FAMILIES)


register_family(ModelFamily(
    name="convnext", module="morf_search.models.morf_convnext",
    entrypoints={size: f"morf_convnext_{size}" for size in
                 ("atto", "femto", "pico", "nano", "tiny", "small", "base", "cifar")},
    num_stages=4, depth_arg="depths", width_arg="dims", norm="layer", default_kernel=7,
    plain_export="to_plain_convnext"))

register_family(ModelFamily(
    name="resnet", module="morf_search.models.morf_resnet",
    entrypoints={"18": "morf_resnet18", "26": "morf_resnet26", "50": "morf_resnet50", "cifar": "morf_resnet_cifar"},
    num_stages=4, depth_arg="layers", width_arg="channels", norm="batch", default_kernel=3))
