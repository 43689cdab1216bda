"""The latency a search ranks archs by: measured whole, or predicted from the lookup table.

``warm_latency_table`` fills the table before trials run in parallel (units timed while
other trials compute would be noisy) and calibrates it on a few whole networks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch.nn as nn

from ..core.progress import say
from ..models.arch import Arch
from ..space.search_space import SearchSpace
from .measurement import measure
from .setup import LatencySetup
from .table import LatencyTable

Estimator = Callable[[nn.Module], float]


def latency_setup(space: SearchSpace) -> LatencySetup:
    """The space file's latency setup at its data's image size."""
    config = space.config
    return LatencySetup.from_config(config.latency, config.data.image_size)


def latency_estimator(space: SearchSpace, cache_dir: Optional[Path] = None) -> Estimator:
    """Deployed model -> latency (ms), measured or predicted as the space file says."""
    setup = latency_setup(space)
    if space.config.latency.mode == "measure":
        return lambda deployed: measure(deployed, setup).latency_ms
    return LatencyTable(setup, cache_dir).predict


def warm_latency_table(space: SearchSpace, num_classes: int, cache_dir: Optional[Path] = None,
                       calibration_archs: int = 4) -> int:
    """Measure every unit configuration the space can produce; returns the units measured.

    Walking archs that together use every stage choice fills the lookup table up front. A
    few of those archs, from the cheapest to the most expensive, are also measured whole to
    calibrate the table.
    """
    if space.config.latency.mode != "predict":
        return 0
    table = LatencyTable(latency_setup(space), cache_dir)
    longest = max(len(choices) for choices in space.stages)
    archs = [Arch(tuple(choices[index % len(choices)] for choices in space.stages)) for index in range(longest)]
    unit_keys = {}

    def deployed(arch: Arch) -> nn.Module:
        return space.build_model(arch, num_classes, deploy=True).eval()

    def walk():  # one network at a time: a 224 px space's walk would not fit in memory at once
        for arch in archs:
            model = deployed(arch)
            unit_keys[arch] = table.unit_keys(model)
            yield model

    say(f"latency table: {table.path}, for the units of {longest} archs that use every stage choice")
    table.fill(walk())
    if not table.calibrated(deployed(archs[0])):
        archs.sort(key=lambda arch: sum(table.entries[key] for key in unit_keys[arch]))
        picks = sorted({round(i * (len(archs) - 1) / max(calibration_archs - 1, 1)) for i in range(calibration_archs)})
        table.calibrate([deployed(archs[i]) for i in picks])
    return table.measured
