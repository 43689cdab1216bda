"""SearchSpace: the set of Archs a space file allows, and ways to walk it.

Each stage chooses one ``StageSpec`` from its own list (expert subsets between min and max
size, times the allowed routing modes and top-k values); stages choose independently, so
the space is the product of the per-stage lists. A single expert has nothing to route, so
singletons appear once, as ``static``.
"""
from __future__ import annotations

import itertools
import math
import random
from typing import Iterator, List, Sequence, Tuple

import timm
import torch.nn as nn

from ..layer.routing import ROUTING_MODES
from ..models.arch import Arch, StageSpec
from .schema import SpaceFile, StageSpace


def stage_choices(stage: StageSpace) -> Tuple[StageSpec, ...]:
    """Every StageSpec one stage may take, cheapest first within each subset size."""
    choices = []
    for count in range(stage.min_experts, stage.max_experts + 1):
        for subset in itertools.combinations(stage.experts, count):
            if count == 1:
                choices.append(StageSpec(subset, "static"))
                continue
            for routing in stage.routing:
                if routing == "hard":
                    choices.extend(StageSpec(subset, "hard", k) for k in sorted(set(stage.top_k)) if k <= count)
                else:
                    choices.append(StageSpec(subset, routing))
    if not choices:
        raise ValueError("a stage has no valid choice (check top_k against max_experts)")
    return tuple(choices)


class SearchSpace:
    """The per-stage choices of a space file, with size, sampling and enumeration."""

    def __init__(self, space: SpaceFile):
        self.config = space
        self.stages: Tuple[Tuple[StageSpec, ...], ...] = tuple(stage_choices(s) for s in space.stage_spaces)
        self.routings: Tuple[str, ...] = tuple(sorted(
            {spec.routing for choices in self.stages for spec in choices},
            key=ROUTING_MODES.index))

    def build_model(self, arch: Arch, num_classes: int, **kwargs) -> nn.Module:
        """The space's base network with ``arch`` (a timm model; ``deploy=True`` for its inference form)."""
        model = self.config.model
        model.registered.implementation()  # registers the family's entrypoints with timm
        return timm.create_model(model.timm_name, arch=arch, num_classes=num_classes, tau=self.config.supernet.tau,
                                 **model.timm_kwargs(), **kwargs)

    def build_supernet(self, num_classes: int) -> nn.Module:
        """The weight-sharing network: every candidate expert, switchable to every routing mode of the space."""
        return self.build_model(self.supernet_arch, num_classes, routings=self.routings,
                                gumbel=self.config.supernet.gumbel)

    @property
    def family(self):
        """The base network's registry entry (``ModelFamily``)."""
        return self.config.model.registered

    def __len__(self) -> int:
        return math.prod(len(choices) for choices in self.stages)

    def __contains__(self, arch: Arch) -> bool:
        return len(arch) == len(self.stages) and all(s in c for s, c in zip(arch.stages, self.stages))

    def __iter__(self) -> Iterator[Arch]:
        for stages in itertools.product(*self.stages):
            yield Arch(stages)

    def sample(self, rng: random.Random, widest_only: bool = False) -> Arch:
        """A uniformly random arch of the space (of the stages' largest expert sets only, if asked)."""
        stages = self.stages
        if widest_only:
            stages = [[c for c in choices if len(c.experts) == max(len(o.experts) for o in choices)]
                      for choices in stages]
        return Arch(tuple(rng.choice(choices) for choices in stages))

    def from_choices(self, choices: Sequence[str]) -> Arch:
        """The arch whose stages are these stage strings (how engines hand back a sample)."""
        return Arch(tuple(StageSpec.parse(c) for c in choices))

    @property
    def supernet_arch(self) -> Arch:
        """Every candidate expert in every stage: the arch the supernet is built with."""
        return Arch(tuple(
            StageSpec(tuple(sorted({e for spec in choices for e in spec.experts})), self.routings[0])
            for choices in self.stages))

    def largest(self) -> Arch:
        """The most expert-rich, widest-kernel choice per stage (sandwich rule's upper bound)."""
        return Arch(tuple(max(c, key=_stage_size) for c in self.stages))

    def smallest(self) -> Arch:
        """The fewest, smallest experts per stage (sandwich rule's lower bound)."""
        return Arch(tuple(min(c, key=_stage_size) for c in self.stages))

    def single_field_references(self) -> List[Arch]:
        """Archs with one receptive field everywhere (``k3-static`` in every stage, ...) that the space holds."""
        experts = sorted({spec.experts[0] for choices in self.stages for spec in choices if len(spec.experts) == 1})
        return [arch for arch in (self.uniform(e) for e in experts) if arch in self]

    def single_expert_archs(self) -> List[Arch]:
        """Every arch with one static expert per stage: the plain networks (per-stage kernel sizes) the space holds."""
        singles = [[c for c in choices if len(c.experts) == 1] for choices in self.stages]
        return [Arch(stages) for stages in itertools.product(*singles)] if all(singles) else []

    def uniform(self, expert) -> Arch:
        """One static expert in every stage, e.g. ``k7-static`` x 4, in the space or not."""
        return Arch.uniform((expert,), "static", len(self.stages))

    def describe(self) -> List[str]:
        """One line per stage: how many choices and which."""
        return [f"stage {i}: {len(c)} choices: {' '.join(map(str, c))}" for i, c in enumerate(self.stages)]


def _stage_size(spec: StageSpec):
    return len(spec.experts), sum(e.span for e in spec.experts), spec.routing != "static", spec.top_k
