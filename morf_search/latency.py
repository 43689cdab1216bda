"""Latency you can trust: a measurement harness and a per-layer lookup-table predictor.

Measurements use torch.utils.benchmark on the deploy form (always re-parameterized first),
with warm-up, a fixed thread count (set and restored), a stated batch size, input size,
dtype, memory format and device, and CUDA synchronization. Each timing is repeated in
many short rounds; p10, median and p90 are reported with the spread between rounds (the
latency archs are ranked by is the p10, see ``Measurement.latency_ms``), and a measurement
whose spread exceeds the bound is repeated and, if still noisy, flagged. Every result
carries the environment (CPU/GPU model, torch version, threads, allocator) so numbers from
different machines are never compared by accident.

The predictor measures each distinct network unit (stem, each block configuration,
downsampling layers, head) once, all new units side by side, caches the table on disk keyed
by machine, torch version and input shape, and predicts an arch as the sum of its units.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import platform
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.utils import reparameterize_model
from torch.utils.benchmark import Timer

from .allocator import allocator_description, keep_freed_memory
from .deploy import DynamicMoRFConv2d
from .fileio import default_cache_dir, read_json, write_json

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Timing:
    """Per-call latency over timed rounds, in milliseconds."""

    median_ms: float
    p90_ms: float
    spread: float  # (p90 - p10) / median over rounds: how much the rounds disagreed
    rounds: int
    calls_per_round: int
    round_ms: Tuple[float, ...] = ()  # per-call latency of each round, in the order timed

    @property
    def p10_ms(self) -> float:
        return deciles(self.round_ms)[0]

    def as_dict(self) -> dict:
        return asdict(self)


def deciles(values: Sequence[float]) -> List[float]:
    """The nine deciles of ``values`` (all equal to the value when there is only one)."""
    values = list(values)
    return statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else values * 9


def paired_ratio(candidate: Timing, reference: Timing) -> Tuple[float, float, float]:
    """Median, p10 and p90 of ``candidate / reference`` over rounds timed side by side.

    Each round of the two was timed moments apart, so a slow spell of the machine cancels
    out of each round's ratio; the p10-p90 range says how far the ratio itself can be trusted.
    """
    ratios = [c / r for c, r in zip(candidate.round_ms, reference.round_ms)]
    tenths = deciles(ratios)
    return statistics.median(ratios), tenths[0], tenths[-1]


@dataclass(frozen=True)
class LatencySetup:
    """Everything a latency number depends on besides the network itself."""

    input_size: Tuple[int, int, int] = (3, 224, 224)
    batch_size: int = 1
    device: str = "cpu"
    threads: Optional[int] = None  # None: torch's current setting
    dtype: str = "float32"
    channels_last: bool = False
    rounds: int = 75
    max_spread: float = 0.25
    round_seconds: float = 0.01  # many short rounds: more independent samples of a noisy machine
    retries: int = 2
    statistic: str = "p10"  # what ``Measurement.latency_ms`` reports: "p10" or "median" of the rounds

    @classmethod
    def from_config(cls, config, image_size: int) -> "LatencySetup":
        """From a space file's ``latency`` section and the data's image size."""
        device = "cuda" if config.device == "auto" and torch.cuda.is_available() else config.device
        device = "cpu" if device == "auto" else device
        return cls(input_size=(3, image_size, image_size), batch_size=config.batch_size, device=device,
                   threads=config.threads, dtype=config.dtype, channels_last=config.channels_last,
                   rounds=config.rounds, max_spread=config.max_spread, statistic=config.statistic)

    def describe(self) -> str:
        c, h, w = self.input_size
        return (f"batch {self.batch_size}, {c}x{h}x{w}, {self.dtype}, "
                f"{'channels_last' if self.channels_last else 'NCHW'}, {self.device}, {self.threads_used} threads, "
                f"{self.statistic} of {self.rounds} rounds")

    @property
    def threads_used(self) -> int:
        return self.threads or torch.get_num_threads()


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


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device | str = "cpu") -> dict:
    """What a latency number depends on, stored beside it so numbers from different machines never mix.

    Latency is only ever measured with freed memory kept in the process, so the record says so.
    """
    keep_freed_memory()
    device = torch.device(device)
    env = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "device": device.type, "allocator": allocator_description()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


@contextlib.contextmanager
def thread_count(threads: Optional[int]) -> Iterator[None]:
    """Fix torch's intra-op thread count for a measurement and restore it afterwards."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def time_side_by_side(candidates: Mapping[str, Callable[[], object]], rounds: int = 15,
                      round_seconds: float = 0.05, warmup: int = 3) -> Dict[str, Timing]:
    """Time zero-argument callables in interleaved rounds (A, B, C, A, B, C, ...).

    Interleaving makes drifting clocks or a noisy neighbour hit every candidate alike, which
    is what makes ratios between them meaningful (see ``paired_ratio``). Freed memory is kept
    in the process first (see ``allocator``), so page faults do not decide the numbers.
    """
    keep_freed_memory()
    timers, numbers = {}, {}
    for name, fn in candidates.items():
        timer = Timer(stmt="fn()", globals={"fn": fn})
        timer.timeit(warmup)
        once = timer.timeit(1).mean
        timers[name] = timer
        numbers[name] = max(1, int(round_seconds / max(once, 1e-7)))
    samples = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, timer in timers.items():
            samples[name].append(timer.timeit(numbers[name]).mean * 1e3)
    results = {}
    for name, values in samples.items():
        median, tenths = statistics.median(values), deciles(values)
        results[name] = Timing(median, tenths[-1], (tenths[-1] - tenths[0]) / median, rounds, numbers[name],
                               tuple(values))
    return results


def _prepare(module: nn.Module, setup: LatencySetup) -> nn.Module:
    module = module.to(device=setup.device, dtype=DTYPES[setup.dtype]).eval()
    return module.to(memory_format=torch.channels_last) if setup.channels_last else module


def _example(shape: Sequence[int], setup: LatencySetup) -> torch.Tensor:
    x = torch.randn(setup.batch_size, *shape, device=setup.device, dtype=DTYPES[setup.dtype])
    return x.contiguous(memory_format=torch.channels_last) if setup.channels_last and x.dim() == 4 else x


def _time_modules(modules: Mapping[str, Tuple[nn.Module, Sequence[int]]], setup: LatencySetup
                  ) -> Dict[str, Measurement]:
    """Latency (p10, median, p90) of each prepared module on a random input of its shape.

    The modules are timed side by side in interleaved rounds; those whose rounds disagree by
    more than ``max_spread`` are timed again, together, up to ``retries`` times and then flagged.
    """
    def runner(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
        def run():
            with torch.inference_mode():
                module(x)
        return run

    runs = {name: runner(module, _example(shape, setup)) for name, (module, shape) in modules.items()}
    results: Dict[str, Measurement] = {}
    pending = list(runs)
    with thread_count(setup.threads):
        env = environment(setup.device)
        for attempt in range(1, setup.retries + 2):
            timings = time_side_by_side({name: runs[name] for name in pending}, rounds=setup.rounds,
                                        round_seconds=setup.round_seconds)
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


def measure_side_by_side(models: Mapping[str, nn.Module], setup: LatencySetup, deploy: bool = True
                         ) -> Dict[str, Measurement]:
    """``measure`` for several networks in interleaved rounds, so their differences are not drift."""
    prepared = {name: (_prepare(reparameterize_model(model) if deploy else copy.deepcopy(model), setup),
                       setup.input_size) for name, model in models.items()}
    return _time_modules(prepared, setup)


# -- lookup-table predictor -------------------------------------------------------------------

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
        self.environment = environment(setup.device)
        key_source = json.dumps({"env": {k: v for k, v in self.environment.items() if k != "threads"},
                                 "setup": {k: v for k, v in asdict(setup).items()
                                           if k in ("input_size", "batch_size", "device", "dtype", "channels_last",
                                                    "statistic")},
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
                    missing[key] = (_prepare(copy.deepcopy(module), self.setup), in_shape)
        if missing:
            for key, result in _time_modules(missing, self._rotation_setup()).items():
                self.entries[key] = result.latency_ms
            self.measured += len(missing)
            self.save()
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
        measured = [result.latency_ms for result in measure_side_by_side(dict(enumerate(models)), self.setup).values()]
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
        return scale, offset
