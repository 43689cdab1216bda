"""Pareto fronts over trial rows with constraints, and 2-D hypervolume, in O(n log n) for two objectives.

Objectives have a direction (accuracy is maximized, latency, params and FLOPs minimized).
Only evaluated, feasible rows compete; a row satisfying every constraint dominates any
that violates one.
"""
from __future__ import annotations

import bisect
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


def nondominated(points: np.ndarray) -> np.ndarray:
    """Which points (minimization, one row each) no other point dominates; equal points all stay.

    Two objectives: sorted by the first, a point is on the front when it has the least second
    objective of its first-objective value and beats every smaller first value: O(n log n). More
    objectives: in lexicographic order a point can only be dominated by earlier ones, hence by an
    earlier front member: O(n x front size).
    """
    n, dims = points.shape
    order = np.lexsort(points.T[::-1])
    ordered = points[order]
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    if dims <= 2:
        first, second = ordered[:, 0], ordered[:, -1]
        starts = np.flatnonzero(np.r_[True, first[1:] != first[:-1]])  # groups of equal first objective
        group_least = np.minimum.reduceat(second, starts)
        before = np.r_[np.inf, np.minimum.accumulate(group_least)[:-1]]  # least second of smaller firsts
        sizes = np.diff(np.r_[starts, n])
        keep[order] = (second == np.repeat(group_least, sizes)) & (second < np.repeat(before, sizes))
        return keep
    front = np.empty((0, dims))
    for index, point in zip(order, ordered):
        if not np.any(np.all(front <= point, axis=1) & np.any(front < point, axis=1)):
            keep[index] = True
            front = np.vstack([front, point])
    return keep


def pareto_front(frame: pd.DataFrame, objectives: Sequence[str],
                 constraints: Optional[Dict[str, float]] = None) -> pd.DataFrame:
    """The feasible non-dominated rows, sorted by the second objective (or the first)."""
    candidates = _candidates(frame, objectives, constraints)
    if candidates.empty:
        return candidates
    front = candidates[nondominated(_as_minimization(candidates, objectives))]
    return front.sort_values(list(objectives[1:2] or objectives[:1])).reset_index(drop=True)


def _candidates(frame: pd.DataFrame, objectives: Sequence[str], constraints: Optional[Dict[str, float]]):
    """Rows that compete: feasible, every objective measured, the first row of each arch."""
    candidates = feasible(frame, constraints).dropna(subset=list(objectives))
    return candidates.drop_duplicates(subset="arch") if "arch" in candidates else candidates


class _Staircase:
    """The 2-D front of the points added so far and the area it dominates up to ``reference``.

    Points are kept by increasing first objective (hence decreasing second); adding one costs a
    binary search plus the front members it removes, so n additions cost O(n log n) comparisons.
    """

    def __init__(self, reference: np.ndarray):
        self.reference = reference
        self.xs: List[float] = []
        self.ys: List[float] = []
        self.volume = 0.0

    def add(self, x: float, y: float) -> None:
        if not (x < self.reference[0] and y < self.reference[1]):
            return
        right = bisect.bisect_right(self.xs, x)  # members with a first objective <= x
        if right and self.ys[right - 1] <= y:
            return  # dominated by (or equal to) a member
        start = bisect.bisect_left(self.xs, x)
        end = start
        while end < len(self.xs) and self.ys[end] >= y:  # the members the new point dominates
            end += 1
        # the new area: strips from x to each next corner, under the height the front covered there
        height, left, gained = (self.ys[start - 1] if start else self.reference[1]), x, 0.0
        for corner_x, corner_y in zip(self.xs[start:end], self.ys[start:end]):
            gained += (corner_x - left) * (height - y)
            left, height = corner_x, corner_y
        limit = self.xs[end] if end < len(self.xs) else self.reference[0]
        self.volume += gained + (limit - left) * (height - y)
        self.xs[start:end], self.ys[start:end] = [x], [y]


def _reference_point(objectives: Sequence[str], reference: Sequence[float]) -> np.ndarray:
    return np.array([reference[i] * (-1.0 if OBJECTIVES[o] == "max" else 1.0) for i, o in enumerate(objectives)])


def hypervolume_2d(front: pd.DataFrame, objectives: Tuple[str, str], reference: Tuple[float, float]) -> float:
    """Area dominated by ``front`` and bounded by ``reference`` (in the objectives' own units).

    For accuracy (max) vs latency (min) with reference (acc_ref, lat_ref): the area of
    points (latency <= lat_ref, accuracy >= acc_ref) that some front member dominates.
    """
    staircase = _Staircase(_reference_point(objectives, reference))
    if not front.empty:
        for x, y in _as_minimization(front, objectives):
            staircase.add(x, y)
    return float(staircase.volume)


def hypervolume_curve(frame: pd.DataFrame, objectives: Tuple[str, str], reference: Tuple[float, float],
                      constraints: Optional[Dict[str, float]] = None) -> List[float]:
    """Hypervolume of the front of the first n trials, for n = 1 .. len(frame) (search progress).

    One pass: the front of the first n rows is the front of the competing rows among them (a later
    row of an arch never competes), so each row updates a running staircase.
    """
    staircase = _Staircase(_reference_point(objectives, reference))
    candidates = _candidates(frame.reset_index(drop=True), objectives, constraints) if not frame.empty else frame
    points = dict(zip(candidates.index, _as_minimization(candidates, objectives))) if not candidates.empty else {}
    curve = []
    for position in range(len(frame)):
        if position in points:
            staircase.add(*points[position])
        curve.append(float(staircase.volume))
    return curve
