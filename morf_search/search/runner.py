"""What one trial does, whichever engine schedules it: an arch in, its objectives out.

``TrialRunner.evaluate`` is the one place that chooses between one-shot evaluation (the
supernet's inherited weights) and standalone training (from scratch, reporting after every
epoch so a scheduler such as ASHA can stop it). Costs (latency, params, FLOPs) come first:
an arch that violates a constraint is recorded as ``infeasible`` without spending time on
its accuracy. The runner takes the run's context (config, space, data, supernet, latency
estimator), so engines that run trials in worker processes (Ray) and in-process (NNI)
share the same code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
from timm.utils import reparameterize_model

from ..latency.cost import count_flops, count_params
from ..models.arch import Arch
from ..training.evaluate import top1_accuracy
from ..training.loop import fit
from ..training.routing_stats import RoutingRecorder
from .trials import routing_fields

Metrics = Dict[str, float]
EpochReport = Callable[[Metrics], None]


@dataclass
class TrialResult:
    """A trial's objectives, status (``ok`` or ``infeasible``), why, standalone epochs trained, and
    how its routed stages used their experts (trials.csv columns, see ``trials.routing_fields``)."""

    metrics: Metrics
    status: str = "ok"
    message: str = ""
    epochs: Optional[int] = None
    routing: Dict[str, object] = field(default_factory=dict)


def violated_constraints(metrics: Metrics, constraints: Dict[str, float]) -> List[str]:
    return [f"{name} {metrics[name]:.4g} > {bound:.4g}" for name, bound in constraints.items()
            if metrics.get(name) is not None and metrics[name] > bound]


class TrialRunner:
    """Evaluates archs of one run, one-shot or standalone as its space file says."""

    def __init__(self, context):
        self.context = context
        self.config = context.config
        self.constraints = dict(self.config.search.constraints)

    @property
    def standalone_search(self) -> bool:
        return self.config.search.evaluation == "standalone"

    def evaluate(self, arch: Arch, report: Optional[EpochReport] = None) -> TrialResult:
        """The arch's objectives; standalone training calls ``report`` after every epoch."""
        if self.standalone_search:
            return self.standalone(arch, report)
        return self.oneshot(arch)

    def costs(self, deployed: nn.Module) -> Metrics:
        size = self.config.data.image_size
        return {"latency_ms": self.context.latency(deployed), "params": count_params(deployed),
                "flops": count_flops(deployed, (3, size, size))}

    def _infeasible(self, metrics: Metrics) -> Optional[TrialResult]:
        problems = violated_constraints(metrics, self.constraints)
        return TrialResult({**metrics, "accuracy": 0.0}, "infeasible", "; ".join(problems)) if problems else None

    def oneshot(self, arch: Arch) -> TrialResult:
        """Objectives from inherited supernet weights."""
        evaluator = self.context.evaluator
        deployed = evaluator.deploy(arch)
        metrics = self.costs(deployed)
        infeasible = self._infeasible(metrics)
        if infeasible:
            return infeasible
        with RoutingRecorder(deployed) as recorder:
            accuracy = top1_accuracy(deployed, evaluator.val, self.context.device, recorder)
        return TrialResult({**metrics, "accuracy": accuracy}, routing=routing_fields(recorder.summary()))

    def standalone(self, arch: Arch, report: Optional[EpochReport] = None, epochs: Optional[int] = None,
                   seed: Optional[int] = None) -> TrialResult:
        """Train ``arch`` from scratch with the supernet's recipe for ``epochs`` (default ``search.standalone_epochs``)."""
        context = self.context
        seed = self.config.seed if seed is None else seed
        torch.manual_seed(seed)
        model = context.space.build_model(arch, context.num_classes)
        metrics = self.costs(reparameterize_model(model.eval()))
        infeasible = self._infeasible(metrics)
        if infeasible:
            return infeasible

        routing = {}

        def evaluate(trained):
            with RoutingRecorder(trained) as recorder:
                scores = {**metrics, "accuracy": top1_accuracy(trained, context.val_batches, context.device, recorder)}
            routing.update(routing_fields(recorder.summary()))
            if report is not None:
                report({**scores, **routing})
            return {"accuracy": scores["accuracy"]}

        epochs = self.config.search.standalone_epochs if epochs is None else epochs
        history = fit(model.to(context.device), context.train_loader(seed), self.config.supernet, context.device,
                      seed=seed, evaluate=evaluate, label=f"standalone {arch}", epochs=epochs)
        return TrialResult({**metrics, "accuracy": history[-1]["accuracy"]}, epochs=epochs, routing=routing)
