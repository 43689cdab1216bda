"""Arch: what a MoRF network chooses per stage, with one canonical, reversible string form.

Grammar: stages joined by ``_``; each stage ``k<experts joined by .>-<routing>[<top_k>]``,
a dilated expert written ``3d2``; e.g. ``k3.5-soft_k3.7-hard_k5.7.9-static_k7-static`` or
``k3.5.7-hard2_k3-static_k3-static_k3-static``. The string names files, CSV rows and the
``arch=`` argument of the timm entrypoints; the family and size come from the model name
(``morf_convnext_tiny``), exactly as they do for any timm model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Tuple, Union

from ..layer.experts import Expert, ExpertLike, parse_experts
from ..layer.routing import check_routing, check_top_k

_STAGE_RE = re.compile(r"^k(?P<experts>[0-9d.]+)-(?P<routing>[a-z]+)(?P<top_k>\d*)$")


@dataclass(frozen=True)
class StageSpec:
    """One stage: its expert set, routing mode and (for hard routing) experts per sample."""

    experts: Tuple[Expert, ...]
    routing: str = "static"
    top_k: int = 1

    def __post_init__(self):
        object.__setattr__(self, "experts", parse_experts(self.experts, "experts"))
        check_routing(self.routing)
        if self.routing == "hard":
            check_top_k(self.top_k, len(self.experts))
        elif self.top_k != 1:
            raise ValueError(f"top_k: only hard routing takes top_k, {self.routing!r} got {self.top_k}")

    @property
    def kernel_size(self) -> int:
        """Side of the merged kernel, i.e. of the deployed convolution."""
        return max(e.span for e in self.experts)

    def __str__(self) -> str:
        suffix = str(self.top_k) if self.routing == "hard" and self.top_k > 1 else ""
        return f"k{'.'.join(map(str, self.experts))}-{self.routing}{suffix}"

    @classmethod
    def parse(cls, text: str) -> "StageSpec":
        match = _STAGE_RE.match(text)
        if not match:
            raise ValueError("expected k<sizes joined by '.'>-<static|soft|hard>[top_k], e.g. 'k3.5-soft' or 'k3.7-hard2'")
        experts = [Expert.parse(e) for e in match.group("experts").split(".")]
        top_k = int(match.group("top_k")) if match.group("top_k") else 1
        return cls(tuple(experts), match.group("routing"), top_k)


ArchLike = Union["Arch", str]


@dataclass(frozen=True)
class Arch:
    """A frozen, hashable per-stage specification of a MoRF network."""

    stages: Tuple[StageSpec, ...]

    def __post_init__(self):
        stages = tuple(self.stages)
        if not stages or not all(isinstance(s, StageSpec) for s in stages):
            raise ValueError("arch: needs one StageSpec per stage")
        object.__setattr__(self, "stages", stages)

    def __str__(self) -> str:
        return "_".join(map(str, self.stages))

    def __len__(self) -> int:
        return len(self.stages)

    @classmethod
    def parse(cls, text: str) -> "Arch":
        """Read the canonical string; the error names the stage that does not parse."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"arch: expected a string like 'k3.5-soft_k3-static', got {text!r}")
        stages = []
        for index, part in enumerate(text.strip().split("_")):
            try:
                stages.append(StageSpec.parse(part))
            except ValueError as err:
                raise ValueError(f"arch {text!r}: stage {index} {part!r}: {err}") from None
        return cls(tuple(stages))

    @classmethod
    def uniform(cls, experts: Tuple[ExpertLike, ...], routing: str = "static", num_stages: int = 4,
                top_k: int = 1) -> "Arch":
        """The same stage everywhere, e.g. the single-receptive-field references ``k3-static`` x 4."""
        return cls((StageSpec(tuple(experts), routing, top_k),) * num_stages)

    @classmethod
    def coerce(cls, arch: ArchLike, num_stages: int) -> "Arch":
        """Accept an Arch or its string, checking it has one stage per network stage."""
        arch = cls.parse(arch) if isinstance(arch, str) else arch
        if not isinstance(arch, Arch):
            raise ValueError(f"arch: expected an Arch or its string form, got {type(arch).__name__}")
        if len(arch) != num_stages:
            raise ValueError(f"arch {str(arch)!r}: has {len(arch)} stages, the network has {num_stages}")
        return arch

    @property
    def is_static(self) -> bool:
        """All stages static: the deployed network is a plain ConvNet."""
        return all(s.routing == "static" for s in self.stages)
