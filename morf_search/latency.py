"""Latency measurement with torch.utils.benchmark.

Ratios are only meaningful when the things compared are timed side by side: candidates are
measured in interleaved rounds (A, B, C, A, B, C, ...) so drifting clocks or a noisy
neighbour hit all of them alike, and the median over rounds is reported with its spread.
"""
from __future__ import annotations

import contextlib
import platform
import statistics
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterator, Mapping

import torch
from torch.utils.benchmark import Timer


@dataclass(frozen=True)
class Timing:
    """Per-call latency over timed rounds, in milliseconds."""

    median_ms: float
    p90_ms: float
    spread: float  # (p90 - p10) / median: how much the rounds disagreed
    rounds: int
    calls_per_round: int

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
    """What a latency number depends on, stored beside it so numbers from different machines never mix."""
    device = torch.device(device)
    env = {
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device.type,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


@contextlib.contextmanager
def thread_count(threads: int | None) -> Iterator[None]:
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
    """Time each zero-argument callable in interleaved rounds; per-call medians and spreads."""
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
        median = statistics.median(values)
        deciles = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else values * 9
        results[name] = Timing(median, deciles[-1], (deciles[-1] - deciles[0]) / median, rounds, numbers[name])
    return results
