"""What one trial does, whichever engine schedules it: an arch in, its objectives out.

``TrialRunner.evaluate`` is the one place that chooses between one-shot evaluation (the
supernet's inherited weights) and standalone training (from scratch, reporting after every
epoch so a scheduler such as ASHA can stop it; on ``search.standalone_workers`` Ray Train
workers when more than 1). Costs (latency, params, FLOPs) come first:
an arch that violates a constraint is recorded as ``infeasible`` without spending time on
its accuracy. The runner takes the run's context (config, space, data, supernet, latency
estimator), so engines that run trials in worker processes (Ray) and in-process (NNI)
share the same code.
"""
from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
from timm.utils import reparameterize_model

from ..latency.cost import count_flops, count_params
from ..models.arch import Arch
from ..training.evaluate import top1_accuracy
from ..training.distributed import Replica, train
from ..training.loop import Checkpoint, fit
from ..training.routing_stats import RoutingRecorder
from .trials import picked_routing_fields, routing_fields

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
    def scratch(self) -> Path:
        """Where standalone trainings on workers keep their resumable state while they train."""
        return self.context.run.engine_dir / "standalone"

    def discard_scratch(self) -> None:
        """Remove that state: for when no standalone training is in flight (a search that ended)."""
        shutil.rmtree(self.scratch, ignore_errors=True)

    @property
    def standalone_search(self) -> bool:
        return self.config.search.evaluation == "standalone"

    def evaluate(self, arch: Arch, report: Optional[EpochReport] = None, address: Optional[str] = None,
                 threads: Optional[int] = None, use_gpu: Optional[bool] = None) -> TrialResult:
        """The arch's objectives; standalone training calls ``report`` after every epoch (``address``,
        ``threads`` and ``use_gpu``: where its workers run and what each asks Ray for, see ``standalone``)."""
        if self.standalone_search:
            return self.standalone(arch, report, address=address, threads=threads, use_gpu=use_gpu)
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
                   seed: Optional[int] = None, address: Optional[str] = None, threads: Optional[int] = None,
                   use_gpu: Optional[bool] = None) -> TrialResult:
        """Train ``arch`` from scratch with the supernet's recipe for ``epochs`` (default ``search.standalone_epochs``)
        on ``search.standalone_workers`` processes.

        With more than one, a ``TorchTrainer`` trains it (at ``address``, each worker with ``threads`` CPUs and
        a GPU when ``use_gpu``; defaults as ``distributed.train``'s) and a ``report`` means a Ray Tune trial:
        rank 0's epochs reach Tune directly instead (``report`` cannot travel to the workers), with the same
        metrics. Its resumable state lives in ``scratch`` while it trains (a restarted worker continues from
        it) and is removed after (by the end of the next search when a kill left it).
        """
        context = self.context
        seed = self.config.seed if seed is None else seed
        torch.manual_seed(seed)
        metrics = self.costs(reparameterize_model(context.space.build_model(arch, context.num_classes).eval()))
        infeasible = self._infeasible(metrics)
        if infeasible:
            return infeasible
        epochs = self.config.search.standalone_epochs if epochs is None else epochs
        workers = self.config.search.standalone_workers
        job = partial(_train_standalone, context, arch, seed, epochs, metrics, time.time())
        if workers == 1:
            history = job(Replica(), report=report)
        else:
            name = f"standalone-{arch}-seed{seed}-{uuid.uuid4().hex[:8]}"
            checkpoint = Checkpoint.in_dir(self.scratch / name, "standalone")
            try:
                history = train(partial(job, checkpoint=checkpoint), workers, context.device, checkpoint.state,
                                context.run.engine_dir, name, address, threads, use_gpu, to_tune=report is not None)
            finally:
                shutil.rmtree(self.scratch / name, ignore_errors=True)
        last = history[-1]
        return TrialResult({**metrics, "accuracy": last["accuracy"]}, epochs=epochs,
                           routing=picked_routing_fields(last))


def _train_standalone(context, arch: Arch, seed: int, epochs: int, metrics: Metrics, started: float,
                      replica: Replica, report: Optional[EpochReport] = None,
                      checkpoint: Optional[Checkpoint] = None) -> List[dict]:
    """One replica's standalone training of ``arch`` (picklable: Ray Train workers run it)."""
    torch.manual_seed(seed)
    model = context.space.build_model(arch, context.num_classes)

    def evaluate(trained):  # rank 0's record is the trial's report: its objectives, routing and time so far
        with RoutingRecorder(trained) as recorder:
            accuracy = top1_accuracy(trained, context.val_batches, context.device, recorder)
        scores = {**metrics, "accuracy": accuracy, **routing_fields(recorder.summary()),
                  "seconds": time.time() - started}
        if report is not None:
            report(scores)
        return scores

    return fit(model.to(context.device), context.train_loader(seed), context.config.supernet, context.device,
               seed=seed, evaluate=evaluate, label=f"standalone {arch}", epochs=epochs, checkpoint=checkpoint,
               replica=replica)
