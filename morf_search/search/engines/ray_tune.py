"""The Ray Tune engine (default): Optuna samplers over per-stage choices, ASHA for standalone.

Each stage is one categorical parameter whose values are the stage strings of the space,
so the searcher sees exactly the space's choices. ``random``, ``tpe`` and ``nsga2`` are
Optuna samplers inside Ray's ``OptunaSearch``, multi-objective over the space's objectives.
Rows reach trials.csv from a Tune callback in the driver, the only writer. Every start of the
search (fresh or ``--resume``) is a new Tune experiment of the trials still missing, whose
searcher's study is rebuilt from trials.csv (``optuna_study``): Ray's pickled experiment state
is never restored. Ray's temp and storage directories live inside the run; ``address`` joins
an existing cluster instead.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Dict, Optional

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from ...core.errors import UserError
from ...core.progress import say
from ...core.ray_dirs import ray_session
from ...models.arch import Arch
from ...space.schema import OBJECTIVES
from ...training.distributed import see_only_assigned_gpus
from ..progress import SearchProgress
from ..trials import TrialLog, make_row, picked_routing_fields
from . import SearchOutcome
from .optuna_study import STUDY_NAME, PerTrialSeeded, rebuild_study, stage_params


def _arch_of(config: dict, num_stages: int) -> Arch:
    return Arch.parse("_".join(config[p] for p in stage_params(num_stages)))


def _trial(config: dict, context, resources: TrialResources) -> None:
    """A function trainable: evaluate one arch and report its objectives (after every epoch when standalone)."""
    import torch

    see_only_assigned_gpus()
    torch.set_num_threads(resources.cpus)
    arch = _arch_of(config, len(context.space.stages))
    started = time.perf_counter()

    def report(metrics, status="ok", message=""):
        tune.report({**metrics, "status": status, "message": message, "seconds": time.perf_counter() - started})

    result = context.runner.evaluate(arch, report=report, threads=resources.cpus, use_gpu=resources.gpus > 0)
    if result.epochs is None:  # nothing was reported per epoch: one-shot, or infeasible before training
        report({**result.metrics, **result.routing}, result.status, result.message)


def _error_message(trial) -> str:
    try:
        lines = Path(trial.error_file).read_text().strip().splitlines()
    except (OSError, TypeError):
        return "trial failed (no error file)"
    return lines[-1][:500] if lines else "trial failed"


class TrialRecorder(tune.Callback):
    """Writes every finished or failed trial to trials.csv and shows progress (driver side)."""

    def __init__(self, trials_csv: Path, num_stages: int, standalone_epochs: Optional[int], total: int):
        self.trials_csv, self.num_stages = trials_csv, num_stages
        self.standalone_epochs, self.total = standalone_epochs, total
        self.progress: Optional[SearchProgress] = None

    def setup(self, **info):
        self.progress = SearchProgress(self.total, done=len(TrialLog(self.trials_csv)))

    def __getstate__(self):  # Tune pickles callbacks into its experiment state; a progress bar does not pickle
        return {**self.__dict__, "progress": None}

    def _record(self, trial, metrics: dict, status: str, message: str) -> None:
        log = TrialLog(self.trials_csv)
        epochs = metrics.get("training_iteration") if self.standalone_epochs else None
        if status == "ok" and self.standalone_epochs and (epochs or 0) < self.standalone_epochs:
            status = "stopped"
        row = make_row(trial.trial_id, _arch_of(trial.config, self.num_stages), metrics, status, message,
                       metrics.get("seconds", 0.0), "ray", epochs, picked_routing_fields(metrics))
        log.append(row)
        self.progress.update(row)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        self._record(trial, result, result.get("status", "ok"), result.get("message") or "")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, {}, "error", _error_message(trial))

    def on_experiment_end(self, trials, **info):
        if self.progress is not None:
            self.progress.close()


optuna.logging.set_verbosity(optuna.logging.WARNING)


def _sampler(algorithm: str, seed: int) -> optuna.samplers.BaseSampler:
    if algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if algorithm == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    return optuna.samplers.NSGAIISampler(seed=seed)


# What a trial that drives a TorchTrainer asks for itself (Tune refuses a trial that asks for nothing): no CPU,
# since it only waits for its workers, which ask for their own, and counting it would leave a 2-core machine
# one CPU short of a 2-worker trial; the memory its process holds (the run's context: model, data) instead.
DRIVER_MEMORY = 256 * 2**20


@dataclass(frozen=True)
class TrialResources:
    """What each process that trains in a trial requests from Ray, and how many trials run at once.

    ``workers`` > 1 (``search.standalone_workers``): ``cpus`` and ``gpus`` are each Ray Train worker's, and
    the trial itself, their driver, asks only for ``DRIVER_MEMORY``; otherwise they are the trial's own.
    """

    cpus: int
    gpus: float
    concurrency: int
    workers: int = 1

    @classmethod
    def plan(cls, search_cfg, device: str, cluster: Dict[str, float]) -> "TrialResources":
        """GPUs where the run may use CUDA and the cluster has them (a standalone trial trains a network, so
        it gets one per training process; a one-shot trial only evaluates, so four share one); as many trials
        at once as the GPUs hold, else as give each training process four CPUs; the CPUs are shared evenly."""
        standalone = search_cfg.evaluation == "standalone"
        workers = search_cfg.standalone_workers if standalone else 1
        cpus, gpus_total = max(1, int(cluster.get("CPU", 1))), float(cluster.get("GPU", 0))
        gpus = search_cfg.gpus_per_trial
        if gpus is None:
            may_use_cuda = device == "auto" or device.startswith("cuda")
            gpus = (1.0 * workers if standalone else 0.25) if may_use_cuda and gpus_total else 0.0
        if gpus > gpus_total:
            raise UserError(f"search.gpus_per_trial: {gpus:g} is more than the {gpus_total:g} GPUs of the cluster")
        if workers > 1 and gpus not in (0, workers):  # DDP over NCCL: one rank per GPU, one GPU per rank
            raise UserError(f"search.gpus_per_trial: {gpus:g} for {workers} standalone_workers; expected 0 or "
                            f"{workers} (one GPU per worker)")
        concurrency = search_cfg.concurrency or (max(1, int(gpus_total // gpus)) if gpus
                                                 else max(1, cpus // (4 * workers)))
        return cls(max(1, cpus // (concurrency * workers)), gpus / workers, concurrency, workers)

    def trial_request(self) -> Dict[str, float]:
        """``tune.with_resources``' request for the trial's own process."""
        if self.workers > 1:
            return {"cpu": 0, "memory": DRIVER_MEMORY}
        return {"cpu": self.cpus, "gpu": self.gpus}


def _experiment_name(engine_dir: Path) -> str:
    """``search`` for a run's first search, ``search-2``, ``search-3``... for each resumed one."""
    name, number = "search", 1
    while (engine_dir / name).exists():
        number += 1
        name = f"search-{number}"
    return name


def search(context, num_trials: int, seed: int, resume: bool, address: Optional[str] = None) -> SearchOutcome:
    """Run the trials that trials.csv does not hold yet, until it holds ``num_trials``."""
    run, space = context.run, context.space
    search_cfg = space.config.search
    recorded = TrialLog(run.trials_csv).frame()
    missing = num_trials - len(recorded)
    if missing <= 0:
        return SearchOutcome(len(recorded), num_trials)
    if resume:
        say(f"search: {len(recorded)} trials recorded, running the {missing} still missing")
    objectives = list(search_cfg.objectives)
    stages = [[str(choice) for choice in choices] for choices in space.stages]
    storage = rebuild_study(run.engine_dir / "optuna.journal", run.trials_csv, recorded, stages, objectives)
    with ray_session(run.engine_dir, address):
        resources = TrialResources.plan(search_cfg, space.config.device, ray.cluster_resources())
        concurrency = resources.concurrency
        standalone = search_cfg.evaluation == "standalone"
        trainable = tune.with_resources(tune.with_parameters(_trial, context=context, resources=resources),
                                        resources.trial_request())
        searcher = OptunaSearch(metric=objectives, mode=[OBJECTIVES[o] for o in objectives], storage=storage,
                                study_name=STUDY_NAME,
                                sampler=PerTrialSeeded(partial(_sampler, search_cfg.algorithm), seed))
        # Not for trials on workers: a trial Tune stops is killed, and Ray Train frees a killed trainer's
        # placement group only through Ray's state API (the dashboard, which the run's Ray does not start), so
        # the CPUs and GPUs of every trial ASHA stopped would stay taken. Those trials train all their epochs.
        scheduler = (ASHAScheduler(metric="accuracy", mode="max", max_t=search_cfg.standalone_epochs,
                                   grace_period=1, reduction_factor=2) if standalone and resources.workers == 1
                     else None)
        recorder = TrialRecorder(run.trials_csv, len(space.stages),
                                 search_cfg.standalone_epochs if standalone else None, num_trials)
        tuner = tune.Tuner(
            trainable,
            param_space={p: tune.choice(c) for p, c in zip(stage_params(len(stages)), stages)},
            tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
                                        scheduler=scheduler, num_samples=missing, reuse_actors=True),
            run_config=tune.RunConfig(name=_experiment_name(run.engine_dir), storage_path=str(run.engine_dir.resolve()),
                                      verbose=0, callbacks=[recorder],
                                      failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)))
        tuner.fit()
    context.runner.discard_scratch()  # what the trials of a killed search left
    return SearchOutcome(len(TrialLog(run.trials_csv)), num_trials)
