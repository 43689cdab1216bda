"""Which archs of the front become finalists: spread along latency, or the best under each latency budget."""
from __future__ import annotations

from typing import List

import numpy as np
import pandas as pd

from ..search.pareto import feasible, pareto_front
from ..space.schema import SpaceFile


def select_finalists(frame: pd.DataFrame, config: SpaceFile) -> pd.DataFrame:
    """The finalists' trial rows, by latency budgets or spread along the Pareto front."""
    objectives = ("accuracy", "latency_ms")
    constraints = config.search.constraints
    chosen = config.finalists
    if chosen.latency_budgets:
        candidates = feasible(frame, constraints).dropna(subset=list(objectives))
        rows = [candidates[candidates["latency_ms"] <= budget].nlargest(1, "accuracy")
                for budget in sorted(chosen.latency_budgets)]
        picked = pd.concat([r for r in rows if not r.empty]) if any(not r.empty for r in rows) else candidates.iloc[:0]
        return picked.drop_duplicates("arch").reset_index(drop=True)
    front = pareto_front(frame, objectives, constraints)
    if len(front) <= chosen.top_k:
        return front
    targets = np.linspace(front["latency_ms"].min(), front["latency_ms"].max(), chosen.top_k)
    picked: List[int] = []
    for target in targets:  # the nearest not yet picked front member to each evenly spaced latency
        order = (front["latency_ms"] - target).abs().sort_values().index
        picked.append(next(i for i in order if i not in picked))
    return front.loc[sorted(picked)].reset_index(drop=True)
