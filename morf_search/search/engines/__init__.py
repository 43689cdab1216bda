"""Search engines: adapters that schedule a run's trials and write each to its trials.csv.

An engine is a module with ``search(context, num_trials, seed, resume, address=None) ->
SearchOutcome``: it proposes archs of ``context.space``, has ``context.runner`` evaluate
them, and says how it ended. Engines are imported on demand so that a missing optional
engine (NNI) only matters when asked for. A new engine is one module here, its name in
``ENGINES``, and its algorithms in the schema's ``ALGORITHMS``.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

from ...core.errors import UserError

ENGINES = {"ray": "ray_tune", "nni": "nni_engine"}
INSTALL_HINTS = {"nni": "pip install -e '.[nni]'  (NNI 3.0 with pytorch-lightning 2.0.9)"}


@dataclass(frozen=True)
class SearchOutcome:
    """How a search ended: the trials recorded of the trials asked for."""

    recorded: int
    wanted: int

    @property
    def finished(self) -> bool:
        """False when the search stopped early (Ctrl-C, a cluster that went away): resume continues it."""
        return self.recorded >= self.wanted


def get_engine(name: str):
    if name not in ENGINES:
        raise UserError(f"engine: unknown engine {name!r}; expected one of {', '.join(ENGINES)}")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic reporter stays silent at verbose=0
    try:
        return importlib.import_module(f".{ENGINES[name]}", __name__)
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] == "morf_search":
            raise
        hint = INSTALL_HINTS.get(name, "pip install -e .")
        raise UserError(f"engine {name}: {err.name} is not installed; install it with: {hint}") from None
