"""The Ray Tune engine (default): Optuna samplers over per-stage choices, ASHA for standalone.

Each stage is one categorical parameter whose values are the stage strings of the space,
so the searcher sees exactly the space's choices. ``random``, ``tpe`` and ``nsga2`` are
Optuna samplers inside Ray's ``OptunaSearch``, multi-objective over the space's objectives.
Rows reach trials.csv from a Tune callback in the driver, the only writer. Ray's temp and
storage directories live inside the run; ``address`` joins an existing cluster instead.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Optional

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from ...core.progress import say
from ...core.ray_dirs import ray_temp_dir
from ...models.arch import Arch
from ...space.schema import OBJECTIVES
from ..progress import SearchProgress
from ..trials import METRICS, TrialLog, make_row, picked_routing_fields
from . import SearchOutcome


def _stage_params(num_stages: int):
    return [f"stage{i}" for i in range(num_stages)]


def _arch_of(config: dict, num_stages: int) -> Arch:
    return Arch.parse("_".join(config[p] for p in _stage_params(num_stages)))


def _recorded_result(trials_csv: Path, trial_id: str) -> Optional[dict]:
    """The row of a trial that finished before a kill but that Ray's restored state still lists as running."""
    frame = TrialLog(trials_csv).finished()
    rows = frame[frame["trial_id"] == trial_id] if not frame.empty else frame
    if rows.empty:
        return None
    row = rows.iloc[-1]
    return {**{m: row[m] for m in METRICS}, "status": row["status"], "message": row["message"],
            "seconds": row["seconds"], "epochs": row["epochs"], **picked_routing_fields(row.to_dict())}


def _trial(config: dict, context, threads: int) -> None:
    """A function trainable: evaluate one arch and report its objectives (after every epoch when standalone)."""
    import torch

    recorded = _recorded_result(context.run.trials_csv, tune.get_context().get_trial_id())
    if recorded is not None:  # never evaluate a finished trial twice
        tune.report(recorded)
        return
    torch.set_num_threads(threads)
    arch = _arch_of(config, len(context.space.stages))
    started = time.perf_counter()

    def report(metrics, status="ok", message=""):
        tune.report({**metrics, "status": status, "message": message, "seconds": time.perf_counter() - started})

    result = context.runner.evaluate(arch, report=report)
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

    def __getstate__(self):  # Tune pickles callbacks with the experiment; a progress bar does not pickle
        return {**self.__dict__, "progress": None}

    def _record(self, trial, metrics: dict, status: str, message: str) -> None:
        log = TrialLog(self.trials_csv)
        if self.progress is None:  # restored from Tune's pickled experiment after setup ran
            self.setup()
        # a replayed trial reports its recorded epochs once; a live one reports every epoch
        epochs = (metrics.get("epochs") or metrics.get("training_iteration")) if self.standalone_epochs else None
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


def search(context, num_trials: int, seed: int, resume: bool, address: Optional[str] = None) -> SearchOutcome:
    """Run, or continue, the search until the experiment holds ``num_trials`` trials."""
    run, space = context.run, context.space
    search_cfg = space.config.search
    # Save Ray's experiment state at every step (not every ~10 s), so that after a kill -9 it
    # still knows every trial the recorder has written; those rerun only to replay their rows.
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "0"
    started_ray = not ray.is_initialized()
    if started_ray:
        common = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        if address:
            ray.init(address=address, **common)
        else:
            ray.init(_temp_dir=ray_temp_dir(run.engine_dir), **common)
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        concurrency = search_cfg.concurrency or max(1, cpus // 4)
        threads = max(1, cpus // concurrency)
        standalone = search_cfg.evaluation == "standalone"
        trainable = tune.with_resources(
            tune.with_parameters(_trial, context=context, threads=threads), {"cpu": threads})
        experiment = str((run.engine_dir / "search").resolve())
        if resume and tune.Tuner.can_restore(experiment):
            say(f"search: resuming the Ray Tune experiment ({len(TrialLog(run.trials_csv))} trials recorded)")
            tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True)
        else:
            objectives = list(search_cfg.objectives)
            searcher = OptunaSearch(metric=objectives, mode=[OBJECTIVES[o] for o in objectives],
                                    sampler=_sampler(search_cfg.algorithm, seed))
            scheduler = (ASHAScheduler(metric="accuracy", mode="max", max_t=search_cfg.standalone_epochs,
                                       grace_period=1, reduction_factor=2) if standalone else None)
            recorder = TrialRecorder(run.trials_csv.resolve(), len(space.stages),
                                     search_cfg.standalone_epochs if standalone else None, num_trials)
            tuner = tune.Tuner(
                trainable,
                param_space={p: tune.choice([str(c) for c in choices])
                             for p, choices in zip(_stage_params(len(space.stages)), space.stages)},
                tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
                                            scheduler=scheduler, num_samples=num_trials, reuse_actors=True),
                run_config=tune.RunConfig(name="search", storage_path=str(run.engine_dir.resolve()), verbose=0,
                                          callbacks=[recorder],
                                          failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)))
        tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
    return SearchOutcome(len(TrialLog(run.trials_csv)), num_trials)
