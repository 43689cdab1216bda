"""The timing harness: callables timed side by side in interleaved rounds, and the machine they ran on.

``time_side_by_side`` times zero-argument callables with torch.utils.benchmark in many short
rounds, interleaved (A, B, C, A, B, C, ...), so a slow spell of the machine hits every
candidate alike; p10, median and p90 of the rounds and their spread come back per
candidate. ``environment`` describes the machine (CPU/GPU model, torch version, threads,
allocator) so numbers from different machines are never compared by accident. What is
timed (a torch module, an ONNX Runtime session) is the business of ``backends``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import platform
import statistics
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

# Importing torch.utils.benchmark imports torch.utils.cpp_extension, which logs this warning on every
# CPU machine with a CUDA toolkit; morf-search compiles no extensions, so only this one message is dropped.
logging.getLogger("torch.utils.cpp_extension").addFilter(
    lambda record: not record.getMessage().startswith("No CUDA runtime is found"))
from torch.utils.benchmark import Timer  # noqa: E402 (after the filter)

from ..core.allocator import allocator_description, keep_freed_memory  # noqa: E402
from ..core.progress import bar  # noqa: E402


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
                      round_seconds: float = 0.05, warmup: int = 3, desc: str = "") -> Dict[str, Timing]:
    """Time zero-argument callables in interleaved rounds (A, B, C, A, B, C, ...).

    Interleaving makes drifting clocks or a noisy neighbour hit every candidate alike, which
    is what makes ratios between them meaningful (see ``paired_ratio``). Freed memory is kept
    in the process first (see ``allocator``), so page faults do not decide the numbers. With
    ``desc`` a long timing shows its rounds as a progress bar on a terminal.
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
    for _ in bar(range(rounds), rounds, desc) if desc else range(rounds):
        for name, timer in timers.items():
            samples[name].append(timer.timeit(numbers[name]).mean * 1e3)
    results = {}
    for name, values in samples.items():
        median, tenths = statistics.median(values), deciles(values)
        results[name] = Timing(median, tenths[-1], (tenths[-1] - tenths[0]) / median, rounds, numbers[name],
                               tuple(values))
    return results
