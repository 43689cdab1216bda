"""Measuring networks: deploy forms prepared by the setup's backend and timed side by side.

Each timing is repeated in many short rounds; p10, median and p90 are kept with the spread
between rounds, and ``Measurement.latency_ms`` is the statistic archs are ranked by (p10 by
default). A measurement whose rounds disagree by more than ``max_spread`` is repeated
(together with the others still noisy) up to ``retries`` times and then flagged. Every
result carries the setup and the environment, the backend included.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Dict, Mapping, Sequence, Tuple

import torch.nn as nn
from timm.utils import reparameterize_model

from .backends import get_backend
from .harness import environment, thread_count, time_side_by_side
from .setup import LatencySetup


@dataclass
class Measurement:
    """A measured latency with the setup and environment it holds for."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    spread: float
    noisy: bool  # spread stayed above the bound after retries
    attempts: int
    setup: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)

    @property
    def latency_ms(self) -> float:
        """The number searches and lookup tables use: the setup's statistic of the rounds.

        ``p10`` (the default) is the pace of the network when nothing else interferes: on a
        shared machine, where other work slows some rounds, it is what repeats from one
        session to the next (measured on this project's VM: 30 archs timed twice ranked
        alike with Spearman 0.96 by p10, 0.81 by the median).
        """
        return self.p10_ms if self.setup.get("statistic", "p10") == "p10" else self.median_ms

    def as_dict(self) -> dict:
        return asdict(self)


def time_modules(modules: Mapping[str, Tuple[nn.Module, Sequence[int]]], setup: LatencySetup, desc: str = ""
                 ) -> Dict[str, Measurement]:
    """Latency (p10, median, p90) of each module on a random input of its shape (the backend takes the modules).

    ``desc`` labels the rounds' progress bar (see ``time_side_by_side``).
    """
    backend = get_backend(setup.backend)
    results: Dict[str, Measurement] = {}
    with thread_count(setup.threads):
        runs = {name: backend.prepare(module, shape, setup) for name, (module, shape) in modules.items()}
        env = {**environment(setup.device), **backend.environment()}
        pending = list(runs)
        for attempt in range(1, setup.retries + 2):
            label = desc and (desc if attempt == 1 else f"{desc}, {len(pending)} noisy ones again")
            timings = time_side_by_side({name: runs[name] for name in pending}, rounds=setup.rounds,
                                        round_seconds=setup.round_seconds, desc=label)
            for name, timing in timings.items():
                results[name] = Measurement(timing.median_ms, timing.p10_ms, timing.p90_ms, timing.spread,
                                            timing.spread > setup.max_spread, attempt, asdict(setup), env)
            pending = [name for name in pending if results[name].noisy]
            if not pending:
                break
    return results


def measure(model: nn.Module, setup: LatencySetup, deploy: bool = True) -> Measurement:
    """Latency of a network's deploy form (re-parameterized here, on a copy, if it is not yet).

    ``deploy=False`` times the network as given, e.g. a training form to show what
    re-parameterization saves.
    """
    return measure_side_by_side({"model": model}, setup, deploy)["model"]


def measure_side_by_side(models: Mapping[str, nn.Module], setup: LatencySetup, deploy: bool = True,
                         desc: str = "") -> Dict[str, Measurement]:
    """``measure`` for several networks in interleaved rounds, so their differences are not drift."""
    copies = {name: (reparameterize_model(model) if deploy else copy.deepcopy(model), setup.input_size)
              for name, model in models.items()}
    return time_modules(copies, setup, desc)
