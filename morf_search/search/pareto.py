"""Pareto fronts over trial rows: non-dominated sorting with constraints, and 2-D hypervolume.

Objectives have a direction (accuracy is maximized, latency, params and FLOPs minimized).
Only evaluated, feasible rows compete; a row satisfying every constraint dominates any
that violates one.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ..space.schema import OBJECTIVES


def _as_minimization(frame: pd.DataFrame, objectives: Sequence[str]) -> np.ndarray:
    return np.stack([frame[o].to_numpy(float) * (-1.0 if OBJECTIVES[o] == "max" else 1.0)
                     for o in objectives], axis=1)


def feasible(frame: pd.DataFrame, constraints: Optional[Dict[str, float]] = None) -> pd.DataFrame:
    """Rows with status ok whose metrics meet every upper bound."""
    if frame.empty:
        return frame
    keep = frame["status"] == "ok"
    for name, bound in (constraints or {}).items():
        keep &= frame[name] <= bound
    return frame[keep]


def nondominated_ranks(points: np.ndarray) -> np.ndarray:
    """Front index of every point (0 = Pareto front) for minimization, by repeated peeling."""
    n = len(points)
    ranks = np.full(n, -1)
    remaining = np.arange(n)
    rank = 0
    while remaining.size:
        sub = points[remaining]
        dominated = np.zeros(len(remaining), dtype=bool)
        for i in range(len(remaining)):
            better_or_equal = np.all(sub <= sub[i], axis=1)
            strictly_better = np.any(sub < sub[i], axis=1)
            dominated[i] = np.any(better_or_equal & strictly_better)
        ranks[remaining[~dominated]] = rank
        remaining = remaining[dominated]
        rank += 1
    return ranks


def pareto_front(frame: pd.DataFrame, objectives: Sequence[str],
                 constraints: Optional[Dict[str, float]] = None) -> pd.DataFrame:
    """The feasible non-dominated rows, sorted by the second objective (or the first)."""
    candidates = feasible(frame, constraints).dropna(subset=list(objectives))
    candidates = candidates.drop_duplicates(subset="arch") if "arch" in candidates else candidates
    if candidates.empty:
        return candidates
    ranks = nondominated_ranks(_as_minimization(candidates, objectives))
    front = candidates[ranks == 0]
    return front.sort_values(list(objectives[1:2] or objectives[:1])).reset_index(drop=True)


def hypervolume_2d(front: pd.DataFrame, objectives: Tuple[str, str], reference: Tuple[float, float]) -> float:
    """Area dominated by ``front`` and bounded by ``reference`` (in the objectives' own units).

    For accuracy (max) vs latency (min) with reference (acc_ref, lat_ref): the area of
    points (latency <= lat_ref, accuracy >= acc_ref) that some front member dominates.
    """
    if front.empty:
        return 0.0
    points = _as_minimization(front, objectives)
    ref = np.array([reference[i] * (-1.0 if OBJECTIVES[o] == "max" else 1.0) for i, o in enumerate(objectives)])
    points = points[np.all(points < ref, axis=1)]
    volume, lowest = 0.0, ref[1]
    staircase = []
    for x, y in points[np.lexsort((points[:, 1], points[:, 0]))]:  # by first objective, then second
        if y < lowest:
            staircase.append((x, y))
            lowest = y
    for i, (x, y) in enumerate(staircase):
        right = staircase[i + 1][0] if i + 1 < len(staircase) else ref[0]
        volume += (right - x) * (ref[1] - y)
    return float(volume)


def hypervolume_curve(frame: pd.DataFrame, objectives: Tuple[str, str], reference: Tuple[float, float],
                      constraints: Optional[Dict[str, float]] = None) -> List[float]:
    """Hypervolume of the front of the first n trials, for n = 1 .. len(frame) (search progress)."""
    return [hypervolume_2d(pareto_front(frame.iloc[:n], objectives, constraints), objectives, reference)
            for n in range(1, len(frame) + 1)]
