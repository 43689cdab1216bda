"""The Ray engine's Optuna study: rebuilt from trials.csv whenever a search starts or resumes.

The study is the searcher's memory (TPE and NSGA-II read every finished trial); trials.csv is
the run's record. A search therefore never restores Ray's pickled experiment: it writes a
fresh study holding exactly the rows trials.csv holds, so a copied, moved or damaged run
resumes from what it shows (a lost row is simply run again) and nothing the run directory
holds is ever unpickled. The study is an Optuna journal (JSON lines) inside the run, which
``optuna-dashboard runs/<name>/engine/optuna.journal`` opens.

Samplers are seeded per trial (from the search seed and the trial's number) rather than once
per process: a resumed study asks its next trial with the same history and the same seed as
an uninterrupted search would have (exactly so when trials run one at a time), where a
sampler seeded once would restart its random stream at every resume.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from ...core.fileio import CorruptFileError
from ...models.arch import Arch
from ...space.schema import OBJECTIVES

STUDY_NAME = "search"
SamplerFactory = Callable[[int], BaseSampler]  # seed -> a fresh sampler


def stage_params(num_stages: int) -> List[str]:
    """The searcher's parameter names, one categorical per stage whose values are the stage strings."""
    return [f"stage{i}" for i in range(num_stages)]


def trial_seed(seed: int, number: int) -> int:
    """A well-mixed 32-bit seed for trial ``number`` of a search seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class PerTrialSeeded(BaseSampler):
    """An Optuna sampler that gives each trial a fresh sampler seeded by ``trial_seed(seed, number)``.

    Optuna's samplers keep no state but their random stream (history is read from the study,
    NSGA-II's generations from its system attributes), so a fresh one per trial samples what a
    long-lived one would, from a stream that does not depend on how often the process restarted.
    """

    def __init__(self, make: SamplerFactory, seed: int):
        self._make, self._seed = make, seed
        self._samplers: Dict[int, BaseSampler] = {}

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        if trial.number not in self._samplers:
            self._samplers[trial.number] = self._make(trial_seed(self._seed, trial.number))
        return self._samplers[trial.number]

    def infer_relative_search_space(self, study, trial) -> Dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        self._samplers.pop(trial.number, None)


def _frozen_trial(row: pd.Series, params: Dict[str, str], distributions: Dict[str, BaseDistribution],
                  objectives: Sequence[str]) -> FrozenTrial:
    """A recorded row as Optuna was told it: its objectives when it finished, failed otherwise."""
    values = [row.get(objective) for objective in objectives]
    if row["status"] != "error" and all(pd.notna(v) for v in values):
        return optuna.trial.create_trial(params=params, distributions=distributions,
                                         values=[float(v) for v in values], state=TrialState.COMPLETE)
    return optuna.trial.create_trial(params=params, distributions=distributions, state=TrialState.FAIL)


def rebuild_study(path: Path, trials_csv: Path, trials: pd.DataFrame, stages: List[List[str]],
                  objectives: Sequence[str]) -> JournalStorage:
    """A new journal at ``path`` holding the rows of ``trials`` (trials.csv, in its order); returns its storage."""
    params_of = stage_params(len(stages))
    distributions = {name: CategoricalDistribution(choices) for name, choices in zip(params_of, stages)}
    frozen = []
    for _, row in trials.iterrows():
        parts = Arch.parse(row["arch"]).stages
        params = dict(zip(params_of, map(str, parts)))
        if len(parts) != len(stages) or any(params[n] not in choices for n, choices in zip(params_of, stages)):
            raise CorruptFileError(f"{trials_csv}: trial {row['trial_id']} has arch {row['arch']}, "
                                   "which is not in the run's space")
        frozen.append(_frozen_trial(row, params, distributions, objectives))
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, Path(f"{path}.lock")):  # the run's lock makes this process the journal's only user
        stale.unlink(missing_ok=True)
    storage = JournalStorage(JournalFileBackend(str(path)))
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME,
                                directions=["maximize" if OBJECTIVES[o] == "max" else "minimize" for o in objectives])
    study.add_trials(frozen)
    return storage
