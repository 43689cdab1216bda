"""Search engines: each runs trials over a SearchSpace and writes rows to the run's trials.csv.

An engine is a module with ``search(run, space, num_trials, seed, resume, address=None)``;
they are imported on demand so that a missing optional engine (NNI) only matters when asked for.
"""
from __future__ import annotations

import importlib
import os

from ..errors import UserError

ENGINES = {"ray": "ray_tune", "nni": "nni_engine"}
INSTALL_HINTS = {"nni": "pip install -e '.[nni]'  (NNI 3.0 with pytorch-lightning 2.0.9)"}


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
