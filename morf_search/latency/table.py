"""The per-unit lookup table that predicts a deployed network's latency without timing it whole.

Each distinct network unit (stem, each block configuration, downsampling layers, head) is
timed once, all new units side by side, by the setup's backend; the table is cached on disk
keyed by machine, backend, torch version, threads and input shape, and an arch is predicted
as the calibrated sum of its units.
"""
from __future__ import annotations

import copy
import hashlib
import json
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..core.fileio import default_cache_dir, read_json, write_json
from ..core.progress import say
from ..layer.deploy import DynamicMoRFConv2d
from .backends import get_backend
from .harness import environment
from .measurement import measure_side_by_side, time_modules
from .setup import LatencySetup


def _conv_signature(module: nn.Module) -> Optional[str]:
    if isinstance(module, DynamicMoRFConv2d):
        top = f"/top{module.top_k}" if module.routing == "hard" else ""
        experts = ".".join(map(str, module.experts))
        return f"{module.routing}[{experts}]{top}/g{module.groups}"
    if isinstance(module, nn.Conv2d):
        return f"conv{module.kernel_size[0]}x{module.kernel_size[1]}/s{module.stride[0]}/g{module.groups}"
    return None


def unit_key(name_kind: str, module: nn.Module, in_shape, out_shape) -> str:
    """What decides a unit's latency: its type, shapes, convolutions and size."""
    convs = ",".join(s for s in (_conv_signature(m) for m in module.modules()) if s)
    params = sum(p.numel() for p in module.parameters())
    return (f"{name_kind}:{type(module).__name__}:in{'x'.join(map(str, in_shape))}:"
            f"out{'x'.join(map(str, out_shape))}:{convs}:p{params}")


def _unit_shapes(model: nn.Module, modules: Sequence[nn.Module], input_size) -> List[Tuple[tuple, tuple]]:
    """Input and output shape (without batch) of each module during one forward of ``model``."""
    shapes = {}

    def record(index):
        def hook(module, args, output):
            shapes.setdefault(index, (tuple(args[0].shape[1:]), tuple(output.shape[1:])))
        return hook

    hooks = [m.register_forward_hook(record(i)) for i, m in enumerate(modules)]
    param = next(model.parameters())
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, *input_size, device=param.device, dtype=param.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return [shapes[i] for i in range(len(modules))]


class LatencyTable:
    """Per-unit latencies on one machine and setup, cached on disk and reused across runs.

    The sum of separately timed units misses what happens between them (Python dispatch,
    memory traffic between layers), so each network structure (its arch-independent units)
    also gets a linear calibration ``measured = scale * sum + offset`` fitted on a few whole
    networks measured end to end.
    """

    def __init__(self, setup: LatencySetup, cache_dir: Optional[Path] = None):
        self.setup = setup
        self.environment = {**environment(setup.device), **get_backend(setup.backend).environment()}
        key_source = json.dumps({"env": {k: v for k, v in self.environment.items() if k != "threads"},
                                 "setup": {k: v for k, v in asdict(setup).items()
                                           if k in ("input_size", "batch_size", "device", "dtype", "channels_last",
                                                    "statistic", "backend")},
                                 "threads": setup.threads_used}, sort_keys=True)
        digest = hashlib.sha256(key_source.encode()).hexdigest()[:16]
        self.path = Path(cache_dir or default_cache_dir()) / "latency" / f"lut-{digest}.json"
        self.entries: Dict[str, float] = {}
        self.calibrations: Dict[str, Tuple[float, float]] = {}
        if self.path.is_file():
            try:
                stored = read_json(self.path)
                self.entries = dict(stored.get("entries", {}))
                self.calibrations = {k: tuple(v) for k, v in stored.get("calibrations", {}).items()}
            except Exception:  # an unreadable cache is only lost time: rebuild it
                self.entries, self.calibrations = {}, {}
        self.measured = 0

    def save(self) -> None:
        write_json(self.path, {"environment": self.environment, "setup": asdict(self.setup),
                               "entries": self.entries, "calibrations": self.calibrations})

    def _units(self, model: nn.Module) -> List[Tuple[str, str, nn.Module, tuple]]:
        """(kind, key, module, input shape) of every non-trivial unit of a deployed MoRF model."""
        units = [(kind, m) for kind, m in model.latency_units() if not isinstance(m, nn.Identity)]
        shapes = _unit_shapes(model, [m for _, m in units], self.setup.input_size)
        return [(kind, unit_key(kind, module, i, o), module, i) for (kind, module), (i, o) in zip(units, shapes)]

    @staticmethod
    def _structure(units) -> str:
        """What stays fixed across the archs of one network: every unit but the blocks."""
        return hashlib.sha256("|".join(key for kind, key, _, _ in units if kind != "block").encode()).hexdigest()[:16]

    def unit_keys(self, model: nn.Module) -> List[str]:
        return [key for _, key, _, _ in self._units(model)]

    def _rotation_setup(self) -> LatencySetup:
        """Units are timed one call per round (four times the rounds, to keep the sample count).

        Between two calls of a unit every other new unit runs once, so each call finds the
        caches as other layers left them, as inside a network, rather than warm from its own
        previous call. Warm timings undercharged soft routing, whose per-sample kernels read
        the whole expert bank, against top-1 hard routing, which reads one expert.
        """
        return replace(self.setup, round_seconds=0.0, rounds=4 * self.setup.rounds)

    def fill(self, models: Iterable[nn.Module]) -> int:
        """Time every unit of ``models`` not yet in the table; returns how many were new.

        The new units are timed side by side in interleaved rounds, so a slow spell of the
        machine hits them alike and their differences, which are what rank archs, hold even
        when a long table build drifts.
        """
        missing = {}
        for model in models:
            for _, key, module, in_shape in self._units(model):
                if key not in self.entries and key not in missing:
                    missing[key] = (copy.deepcopy(module), in_shape)
        if missing:
            setup = self._rotation_setup()
            say(f"latency table: timing {len(missing)} new units side by side, {setup.rounds} interleaved rounds")
            started = time.perf_counter()
            results = time_modules(missing, setup, desc="latency table")
            for key, result in results.items():
                self.entries[key] = result.latency_ms
            self.measured += len(missing)
            self.save()
            again = sum(result.attempts > 1 for result in results.values())
            say(f"latency table: {len(missing)} units timed in {time.perf_counter() - started:.0f} s"
                + (f" ({again} noisy ones timed again)" if again else ""))
        return len(missing)

    def unit_sum(self, model: nn.Module) -> float:
        """Sum of the units' latencies (ms), measuring the ones not yet in the table."""
        self.fill([model])
        return sum(self.entries[key] for key in self.unit_keys(model))

    def predict(self, model: nn.Module) -> float:
        """Predicted latency (ms) of a deployed MoRF model: its calibrated unit sum."""
        total = self.unit_sum(model)
        scale, offset = self.calibrations.get(self._structure(self._units(model)), (1.0, 0.0))
        return scale * total + offset

    def calibrated(self, model: nn.Module) -> bool:
        return self._structure(self._units(model)) in self.calibrations

    def calibrate(self, models: Sequence[nn.Module]) -> Tuple[float, float]:
        """Fit and store this structure's calibration from whole-network measurements of ``models``."""
        sums = [self.unit_sum(m) for m in models]
        say(f"latency table: calibrating on {len(models)} whole networks")
        started = time.perf_counter()
        timings = measure_side_by_side(dict(enumerate(models)), self.setup, desc="latency calibration")
        measured = [result.latency_ms for result in timings.values()]
        if len(models) >= 3 and max(sums) > min(sums) * 1.05:
            mean_x, mean_y = statistics.fmean(sums), statistics.fmean(measured)
            scale = (sum((x - mean_x) * (y - mean_y) for x, y in zip(sums, measured))
                     / sum((x - mean_x) ** 2 for x in sums))
            offset = mean_y - scale * mean_x
        else:  # too few or too similar networks to fit a slope: correct the ratio only
            scale, offset = statistics.median(y / x for x, y in zip(sums, measured)), 0.0
        if scale <= 0:
            scale, offset = statistics.median(y / x for x, y in zip(sums, measured)), 0.0
        self.calibrations[self._structure(self._units(models[0]))] = (scale, offset)
        self.save()
        say(f"latency table: calibrated in {time.perf_counter() - started:.0f} s "
            f"(measured = {scale:.3f} x unit sum {offset:+.3f} ms)")
        return scale, offset
