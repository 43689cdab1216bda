"""The NNI engine: NNI 3.0's multi-trial strategies over the same per-stage choices, in this process.

The space becomes an NNI ``ModelSpace`` with one categorical mutable per stage, labelled
``stage0``, ``stage1``, ... as the Ray engine's parameters, whose values are the stage strings.
``random``, ``evolution`` (regularized evolution), ``tpe`` and ``grid`` are NNI's strategies,
seeded with the search seed. NNI's sequential execution engine runs every candidate here,
through the same ``TrialRunner`` as Ray's trials, and each becomes a trials.csv row (engine
``nni``); a candidate whose evaluation raises becomes an ``error`` row and the search goes on.

NNI optimizes a single metric, so accuracy is what the strategies see. Constraints reach them
as a penalty: the TrialRunner returns an arch that violates a bound of ``search.constraints`` as
``infeasible`` with accuracy 0.0. Every row still records all objectives (accuracy, latency_ms,
params, flops), so the Pareto front is drawn from trials.csv exactly as for Ray.

Resume replays the search: the strategies are seeded and candidates run one at a time, so the
n-th candidate is trial ``nni_<n>`` and a restarted search proposes the same candidates as long
as it is told the same results. A resumed search therefore starts the same strategy with the
full budget and answers every candidate that trials.csv already holds from its row, without
evaluating it; evaluation continues with the first trial that has no row. NNI's experiment
(log, checkpoint) lives in ``engine/nni`` inside the run, never in ``~/nni-experiments``.
"""
from __future__ import annotations

import logging
import time
import warnings
from typing import Dict, Optional, Sequence

import pandas as pd

with warnings.catch_warnings():  # importing NNI 3.0 warns about torch 2.x classes it does not know
    warnings.simplefilter("ignore")  # (torch.nn.Buffer, ...) and about lightning's deprecated packaging
    import nni
    from nni.mutable import ensure_frozen
    from nni.nas import strategy as strategies
    from nni.nas.evaluator import FunctionalEvaluator
    from nni.nas.experiment import NasExperiment, NasExperimentConfig
    from nni.nas.nn.pytorch import ModelSpace
    from nni.nas.space import RawFormatModelSpace, model_context
    from nni.runtime.log import silence_stdout

from ...core.errors import UserError
from ...core.progress import say
from ...models.arch import Arch
from ..progress import SearchProgress
from ..runner import TrialResult
from ..trials import TrialLog, make_row
from . import SearchOutcome

silence_stdout()  # NNI prints every step to stdout; its experiment.log in the run keeps the warnings
logging.getLogger("nni").setLevel(logging.WARNING)

EXPERIMENT_ID = "search"


def stage_labels(num_stages: int):
    return [f"stage{i}" for i in range(num_stages)]


def trial_id(position: int) -> str:
    return f"nni_{position:05d}"


class StageChoices(ModelSpace):
    """The space as NNI sees it: a categorical ``stage<i>`` over each stage's strings.

    It builds no network (the TrialRunner does); a frozen instance just holds the chosen strings.
    """

    def __init__(self, stages: Sequence[Sequence[str]]):
        super().__init__()
        self.stages = [list(choices) for choices in stages]
        self.choices = [ensure_frozen(self.add_mutable(nni.choice(label, choices)))
                        for label, choices in zip(stage_labels(len(self.stages)), self.stages)]

    def freeze(self, sample: Dict[str, str]) -> "StageChoices":
        with model_context(sample):
            return StageChoices(self.stages)


class CopiedSampleFormat(RawFormatModelSpace):
    """NNI's raw model format, keeping its own copy of each candidate's sample.

    Grid search freezes every candidate with one dict that it keeps changing while it walks the
    grid; the raw format would hold on to that dict, so the candidates waiting in the grid's
    shuffle buffer would all run with the last (or an empty) sample.
    """

    def freeze(self, sample: Dict[str, str]) -> "CopiedSampleFormat":
        return super().freeze(dict(sample))


class RunExperiment(NasExperiment):
    """A sequential, raw-format NasExperiment that writes only inside its working directory."""

    def executable_model_factory(self, config) -> CopiedSampleFormat:
        return CopiedSampleFormat.from_model(self.model_space, self.evaluator)

    # Without a web server NNI still adds each experiment to nnictl's list in ~/nni-experiments,
    # whatever the working directory; nothing here reads that list (resume goes by trials.csv).
    def _start_without_nni_manager(self) -> None:
        pass

    def _stop_without_nni_manager(self) -> None:
        pass


class TrialEvaluation:
    """NNI's evaluation function: a candidate becomes a trials.csv row, and its accuracy NNI's metric."""

    def __init__(self, context, progress: SearchProgress, recorded: pd.DataFrame):
        self.context, self.progress = context, progress
        self.log = TrialLog(context.run.trials_csv)
        self.recorded = {row["trial_id"]: row for _, row in recorded.iterrows()}
        self.proposed = 0

    def __call__(self, model: StageChoices) -> None:
        trial = trial_id(self.proposed)
        self.proposed += 1
        arch = self.context.space.from_choices(model.choices)
        if trial in self.recorded:
            self._replay(trial, arch)
            return
        started = time.perf_counter()
        try:  # NNI's strategies never stop a trial early, so standalone epochs need no reports
            result = self.context.runner.evaluate(arch)
        except Exception as err:  # one failing arch must not end the search
            result = TrialResult({}, "error", f"{type(err).__name__}: {err}"[:500])
        metrics, status = result.metrics, result.status
        row = make_row(trial, arch, metrics, status, result.message, time.perf_counter() - started, "nni",
                       result.epochs, result.routing)
        self.log.append(row)
        self.progress.update(row)
        if status != "error":  # a failed trial reports no metric, so the strategies skip it
            nni.report_final_result(metrics["accuracy"])

    def _replay(self, trial: str, arch: Arch) -> None:
        """Tell NNI the recorded result again, so that it proposes what it proposed before."""
        row = self.recorded[trial]
        if row["arch"] != str(arch):
            say(f"search: NNI now proposes {arch} as {trial}, which was {row['arch']}; the recorded row stays")
        if row["status"] != "error":
            nni.report_final_result(float(row["accuracy"]))


def _strategy(algorithm: str, seed: int, num_trials: int, num_stages: int) -> strategies.Strategy:
    if algorithm == "random":
        return strategies.Random(seed=seed)
    if algorithm == "grid":
        return strategies.GridSearch(seed=seed)
    if algorithm == "tpe":
        return strategies.TPE(optimize_mode="maximize", seed=seed)
    # NNI's defaults (population 100, tournaments of 25, 5% mutation per choice) suit thousands of
    # trials; scale the population to the budget and mutate one stage per child on average.
    population = min(100, max(2, num_trials // 4))
    return strategies.RegularizedEvolution(population_size=population, sample_size=max(1, population // 4),
                                           mutation_prob=1 / num_stages, seed=seed)


def search(context, num_trials: int, seed: int, resume: bool, address: Optional[str] = None) -> SearchOutcome:
    """Run, or continue, the search until trials.csv holds ``num_trials`` trials."""
    run, space = context.run, context.space
    if address:
        raise UserError("--address joins a Ray cluster; the NNI engine runs its trials in this process")
    if num_trials > len(space):
        raise UserError(f"search.num_trials: {num_trials} is more than the {len(space)} architectures of the space "
                        "(NNI's strategies never propose one twice)")
    recorded = TrialLog(run.trials_csv).frame() if resume else pd.DataFrame()
    if len(recorded):
        say(f"search: resuming the NNI search, replaying its {len(recorded)} recorded trials")
    algorithm = space.config.search.algorithm
    progress = SearchProgress(num_trials, done=len(recorded))
    evaluation = TrialEvaluation(context, progress, recorded)
    config = NasExperimentConfig("sequential", "raw")
    config.max_trial_number = num_trials
    config.experiment_working_directory = str((run.engine_dir / "nni").resolve())
    experiment = RunExperiment(StageChoices([[str(spec) for spec in choices] for choices in space.stages]),
                               FunctionalEvaluator(evaluation),
                               _strategy(algorithm, seed, num_trials, len(space.stages)), config, id=EXPERIMENT_ID)
    try:
        experiment.start()
    finally:
        experiment.stop()
        progress.close()
    if evaluation.proposed < num_trials:  # its sampling gave up finding an arch it had not proposed yet
        raise UserError(f"search: NNI's {algorithm} strategy proposed only {evaluation.proposed} distinct "
                        f"architectures for {num_trials} trials; lower search.num_trials or widen the space")
    return SearchOutcome(len(TrialLog(run.trials_csv)), num_trials)
