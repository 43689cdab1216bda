"""The Python API: ``Search(space).fit()`` runs what ``morf-search run`` runs and returns its results.

In the spirit of Ray Tune's ``Tuner(...).fit()``: a ``Search`` is built from a space (a dict, a
``SpaceFile`` or a path), optionally with datasets (``CustomData``) and a model family of your
own, and ``fit()`` runs (or, after ``Search.restore``, continues) the run in its run directory,
exactly as the command line would, and returns ``SearchResults``. ``load_run(path)`` gives the
same results object for any run directory, finished or not, without owning it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import pandas as pd
import torch.nn as nn

from .core.errors import UserError
from .finalists.export import load_export
from .models.registry import ModelFamily, register_family
from .phases import start_run
from .rundir import RunDir, check_run_name
from .runs_overview import read_table, read_trials, run_status
from .space.schema import CUSTOM_DATASET, SpaceFile, load_space, parse_space
from .training.data import CustomData

SpaceLike = Union[SpaceFile, Mapping[str, Any], str, Path]


def _resolve_space(space: SpaceLike, custom_data: bool) -> Tuple[SpaceFile, str]:
    """``(SpaceFile, where it came from)`` for any form of space; with ``custom_data`` a space that names no
    dataset gets ``data.dataset: custom``."""
    if isinstance(space, Mapping):
        values, source = copy.deepcopy(dict(space)), "a space dict"
    else:
        config, source = (space, "a SpaceFile") if isinstance(space, SpaceFile) else (load_space(space), str(space))
        values = config.model_dump(mode="json", exclude_unset=True)
    if custom_data:
        values.setdefault("data", {}).setdefault("dataset", CUSTOM_DATASET)
    return parse_space(values, source), source


class Search:
    """A search to run: the space, where its run directory goes, and what it trains on.

    Args:
        space: the space, as a dict (the space file's YAML as Python values), a ``SpaceFile``
            or the path of a space file.
        name: the run's folder under ``runs`` (default: the space's ``name``, or the file's stem).
        runs: the folder that holds runs.
        data: your own datasets; the space's ``data.dataset`` is then ``custom`` (set for you
            when the space names no dataset).
        family: a model family of your own (``ModelFamily``), registered before the space is
            read so that ``model.family`` may name it.
        engine, trials, seed: as ``morf-search run``'s ``--engine``, ``--trials``, ``--seed``.
        workers: supernet training processes (``--workers``); address: a Ray cluster to join.
    """

    def __init__(self, space: SpaceLike, *, name: Optional[str] = None, runs: Union[str, Path] = "runs",
                 data: Optional[CustomData] = None, family: Optional[ModelFamily] = None,
                 engine: Optional[str] = None, trials: Optional[int] = None, seed: Optional[int] = None,
                 workers: Optional[int] = None, address: Optional[str] = None):
        if family is not None:
            register_family(family)
        self.config, self.source = _resolve_space(space, custom_data=data is not None)
        default = self.config.name or (Path(space).stem if isinstance(space, (str, Path)) else None)
        if name is None and default is None:
            raise UserError("Search: name= is needed (the space has no name: field)")
        self.path = Path(runs) / check_run_name(name if name is not None else default, "name")
        self.data, self.workers, self.address = data, workers, address
        self._overrides = {"engine": engine, "trials": trials, "seed": seed}
        self._resume = False

    @classmethod
    def restore(cls, path: Union[str, Path], *, data: Optional[CustomData] = None,
                family: Optional[ModelFamily] = None, workers: Optional[int] = None,
                address: Optional[str] = None) -> "Search":
        """The search of the run at ``path``, to continue exactly as it started (pass the same ``data``)."""
        if family is not None:
            register_family(family)
        run = RunDir.open(Path(path))
        search = cls(run.load_space(), name=run.path.name, runs=run.path.parent, data=data,
                     workers=workers, address=address)
        search.source, search._resume = str(run.space_file), True
        return search

    def fit(self) -> "SearchResults":
        """Run the search (or continue it) to the end; the results say whether it finished or stopped."""
        hint = f"morf_search.Search.restore({str(self.path)!r}{', data=...' if self.data else ''}).fit()"
        command = f"morf_search.Search({self.source}, name={self.path.name!r}).fit()"
        outcome = start_run(self.path, None if self._resume else self.config, self.source, hint, command,
                            workers=self.workers, address=self.address, data=self.data,
                            **({} if self._resume else self._overrides))
        self._resume = True  # a second fit() continues the same run
        return load_run(outcome.run.path)


@dataclass(frozen=True)
class SearchResults:
    """What a run holds: its trials, front, finalists, exports, plots and report (read on first use)."""

    path: Path

    @cached_property
    def run(self) -> RunDir:
        """The run directory, its manifest read once (the results are one snapshot of the run)."""
        return RunDir.open(self.path)

    @property
    def status(self) -> str:
        """``done``, or where the run stands (``stopped in search``, ``running or killed in supernet``, ...)."""
        return run_status(self.run)

    @property
    def manifest(self) -> Dict[str, Any]:
        return self.run.manifest()

    @cached_property
    def trials(self) -> pd.DataFrame:
        """One row per trial: arch, its choices, objectives, status (trials.csv)."""
        return read_trials(self.run)

    @cached_property
    def front(self) -> pd.DataFrame:
        """The Pareto front of the trials under the space's objectives and constraints (pareto.csv)."""
        return read_table(self.run.pareto_csv)

    @cached_property
    def references(self) -> pd.DataFrame:
        """The single-receptive-field archs and baselines the run compared itself with (references.csv)."""
        return read_table(self.run.references_csv)

    @cached_property
    def finalists(self) -> pd.DataFrame:
        """Fine-tuned, verified and exported archs with their accuracies and latencies (finalists.csv)."""
        return read_table(self.run.finalists_csv)

    @property
    def exports(self) -> List[Path]:
        """The finalists' export folders, in finalists.csv order; each loads with timm's ``local-dir:``."""
        if "export" not in self.finalists:
            return []
        return [self.path / export for export in self.finalists["export"]]

    @property
    def plots(self) -> Dict[str, Path]:
        """The report's figures by file name (``accuracy_latency.png``, ``accuracy_latency.html``, ...)."""
        folder = self.run.plots
        return {path.name: path for path in sorted(folder.iterdir())} if folder.is_dir() else {}

    @property
    def report(self) -> Optional[Path]:
        path = self.run.report_file
        return path if path.is_file() else None

    @property
    def rank_check(self) -> Optional[Dict[str, Any]]:
        """How well the one-shot accuracies ranked archs trained standalone (Kendall tau and verdict)."""
        return self.manifest.get("rank_check")

    def load_model(self, finalist: int = 0) -> nn.Module:
        """The ``finalist``-th export as a timm model in eval mode (deploy form, hash verified)."""
        exports = self.exports
        if not -len(exports) <= finalist < len(exports):
            raise UserError(f"{self.path}: finalist {finalist} does not exist; the run exported {len(exports)}")
        return load_export(exports[finalist])

    def __repr__(self) -> str:
        return (f"SearchResults({str(self.path)!r}, status={self.status!r}, trials={len(self.trials)}, "
                f"front={len(self.front)}, finalists={len(self.finalists)})")


def load_run(path: Union[str, Path]) -> SearchResults:
    """The results of the run at ``path`` (any state; nothing is written)."""
    RunDir.open(Path(path)).manifest()  # refuses a folder that is not a run, or a damaged manifest
    return SearchResults(Path(path))
