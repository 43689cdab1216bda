"""What one trial does, independent of the engine that schedules it.

A trial turns an arch into objectives. The ``TrialRunner`` holds what that needs (space,
data, the trained supernet, the latency estimator) and is built once per process from the
run directory, so engines that run trials in worker processes (Ray) and in-process (NNI)
share the same code. Costs (latency, params, FLOPs) come first: an arch that violates a
constraint is recorded as ``infeasible`` without spending time on its accuracy.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import timm
import torch
from timm.utils import reparameterize_model

from .arch import Arch
from .config import SpaceFile
from .cost import count_flops, count_params
from .data import load_splits, make_loader
from .device import resolve_device
from .evaluate import OneShotEvaluator, cache_batches, top1_accuracy
from .fileio import load_weights
from .latency import LatencySetup, LatencyTable, measure
from .progress import bar, interactive, say
from .rundir import RunDir
from .space import SearchSpace
from .supernet import SuperNet
from .train import fit

Metrics = Dict[str, float]


def violated_constraints(metrics: Metrics, constraints: Dict[str, float]) -> List[str]:
    return [f"{name} {metrics[name]:.4g} > {bound:.4g}" for name, bound in constraints.items()
            if metrics.get(name) is not None and metrics[name] > bound]


def latency_estimator(config: SpaceFile, cache_dir: Optional[Path] = None) -> Callable[[torch.nn.Module], float]:
    """Deployed model -> latency (ms), measured or predicted as the space file says."""
    setup = LatencySetup.from_config(config.latency, config.data.image_size)
    if config.latency.mode == "measure":
        return lambda deployed: measure(deployed, setup).latency_ms
    table = LatencyTable(setup, cache_dir)
    return table.predict


def build_model(config: SpaceFile, arch: Arch, num_classes: int, **kwargs) -> torch.nn.Module:
    """The space's base model with ``arch`` (standalone training, export)."""
    return timm.create_model(config.model.timm_name, arch=arch, num_classes=num_classes,
                             tau=config.supernet.tau, **config.model.timm_kwargs(), **kwargs)


def warm_latency_table(config: SpaceFile, space: SearchSpace, num_classes: int, cache_dir: Optional[Path],
                       calibration_archs: int = 4) -> int:
    """Measure every unit configuration the space can produce before trials run in parallel.

    Units timed while other trials compute would be noisy; walking archs that together use
    every stage choice fills the lookup table up front. A few of those archs, from the
    cheapest to the most expensive, are also measured whole to calibrate the table.
    Returns the units measured.
    """
    if config.latency.mode != "predict":
        return 0
    setup = LatencySetup.from_config(config.latency, config.data.image_size)
    table = LatencyTable(setup, cache_dir)
    longest = max(len(choices) for choices in space.stages)
    archs = [Arch(tuple(choices[index % len(choices)] for choices in space.stages)) for index in range(longest)]
    unit_keys = {}

    def deployed(arch: Arch) -> torch.nn.Module:
        return build_model(config, arch, num_classes, deploy=True).eval()

    def walk():  # one network at a time: a 224 px space's walk would not fit in memory at once
        for arch in archs:
            model = deployed(arch)
            unit_keys[arch] = table.unit_keys(model)
            yield model

    say(f"latency table: timing the units of {longest} archs side by side")
    table.fill(walk())
    if not table.calibrated(deployed(archs[0])):
        archs.sort(key=lambda arch: sum(table.entries[key] for key in unit_keys[arch]))
        picks = sorted({round(i * (len(archs) - 1) / max(calibration_archs - 1, 1)) for i in range(calibration_archs)})
        table.calibrate([deployed(archs[i]) for i in picks])
    return table.measured


class TrialRunner:
    """Everything a trial needs, built from the run directory."""

    def __init__(self, run_path: Path):
        self.run = RunDir.open(run_path)
        self.config = config = self.run.load_space()
        self.space = SearchSpace(config)
        self.device = resolve_device(config.device)
        self.splits = load_splits(config.data)
        self.num_classes = config.model.num_classes or self.splits.num_classes
        self.latency = latency_estimator(config)
        self.constraints = dict(config.search.constraints)
        self.evaluator: Optional[OneShotEvaluator] = None
        if config.search.evaluation == "oneshot":
            supernet = SuperNet(self.space, self.num_classes, self.device)
            supernet.model.load_state_dict(load_weights(self.run.path / "supernet.safetensors", self.device))
            self.evaluator = OneShotEvaluator(supernet, self.splits, config, self.device)

    def costs(self, deployed: torch.nn.Module) -> Metrics:
        input_size = (3, self.config.data.image_size, self.config.data.image_size)
        return {"latency_ms": self.latency(deployed), "params": count_params(deployed),
                "flops": count_flops(deployed, input_size)}

    def oneshot(self, arch: Arch) -> tuple[Metrics, str, str]:
        """Objectives from inherited supernet weights: (metrics, status, message)."""
        deployed = self.evaluator.deploy(arch)
        metrics = self.costs(deployed)
        problems = violated_constraints(metrics, self.constraints)
        if problems:
            return {**metrics, "accuracy": 0.0}, "infeasible", "; ".join(problems)
        metrics["accuracy"] = top1_accuracy(deployed, self.evaluator.val, self.device)
        return metrics, "ok", ""

    def standalone(self, arch: Arch, report: Callable[[Metrics], None]) -> tuple[Metrics, str, str]:
        """Train ``arch`` from scratch, calling ``report`` after every epoch (for early stopping)."""
        config = self.config
        model = build_model(config, arch, self.num_classes)
        metrics = self.costs(reparameterize_model(model.eval()))
        problems = violated_constraints(metrics, self.constraints)
        if problems:
            result = {**metrics, "accuracy": 0.0}
            report(result)
            return result, "infeasible", "; ".join(problems)
        data = config.data
        loader = make_loader(self.splits.train, data.batch_size, data.workers, shuffle=True, seed=config.seed,
                             drop_last=True)
        val = self.evaluator.val if self.evaluator else cache_batches(make_loader(
            self.splits.val, data.batch_size, data.workers, shuffle=False, limit=config.search.eval_images))

        def evaluate(trained):
            scores = {**metrics, "accuracy": top1_accuracy(trained, val, self.device)}
            report(scores)
            return {"accuracy": scores["accuracy"]}

        history = fit(model, loader, config.supernet, self.device, seed=config.seed, evaluate=evaluate,
                      label=f"trial {arch}", epochs=config.search.standalone_epochs)
        return {**metrics, "accuracy": history[-1]["accuracy"]}, "ok", ""


_RUNNERS: Dict[str, TrialRunner] = {}


def runner_for(run_path: Path) -> TrialRunner:
    """This process's TrialRunner for a run (worker processes reuse it across trials)."""
    key = str(Path(run_path).resolve())
    if key not in _RUNNERS:
        _RUNNERS[key] = TrialRunner(Path(key))
    return _RUNNERS[key]


class SearchProgress:
    """Trials done of total, best accuracy within the constraints, elapsed time."""

    def __init__(self, total: int, done: int = 0, best: Optional[float] = None):
        self.total, self.done, self.best = total, done, best
        self.started = time.perf_counter()
        self._bar = bar(None, total=total, desc="search", leave=True) if interactive() else None
        if self._bar is not None:
            self._bar.update(done)
        self._next_line = done

    def update(self, row: dict) -> None:
        self.done += 1
        if row.get("status") == "ok" and row.get("accuracy") is not None:
            self.best = row["accuracy"] if self.best is None else max(self.best, row["accuracy"])
        best = "-" if self.best is None else f"{self.best:.2f}%"
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f"best {best}")
        elif self.done >= self._next_line or self.done == self.total:
            self._next_line = self.done + max(1, self.total // 10)
            say(f"search: {self.done}/{self.total} trials, best accuracy within constraints {best}, "
                f"{time.perf_counter() - self.started:.0f}s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
