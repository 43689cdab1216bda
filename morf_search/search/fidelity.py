"""How far to trust one-shot accuracy: does it rank archs as standalone training does?

A weight-sharing supernet's inherited-weight accuracy is only a proxy. ``spread_by_latency``
picks archs across the latency range (at random within each latency stratum: the best of
each stratum would rank bigger-is-better along the front, not the supernet), ``rank_agreement`` compares their one-shot and
standalone accuracies (Kendall's tau and Spearman's rho with bootstrap intervals, and how
many of the standalone top archs the one-shot ranking also puts on top), and ``verdict``
says in plain words how far the front can be trusted.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Callable, List, Sequence, Tuple, TypeVar

import numpy as np
from scipy.stats import kendalltau, spearmanr

T = TypeVar("T")
STRONG, WEAK = 0.5, 0.3  # Kendall tau thresholds for the verdict


@dataclass(frozen=True)
class RankAgreement:
    """Rank correlation of one-shot with standalone accuracy over ``archs`` archs (intervals: bootstrap 90 %)."""

    archs: int
    kendall_tau: float
    kendall_tau_90: Tuple[float, float]
    spearman_rho: float
    spearman_rho_90: Tuple[float, float]
    top_overlap: int  # archs among the standalone top ``top`` that one-shot also ranks top
    top: int

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        (t0, t1), (r0, r1) = self.kendall_tau_90, self.spearman_rho_90
        return (f"Kendall tau {self.kendall_tau:.2f} (90 % interval {t0:.2f}..{t1:.2f}), Spearman rho "
                f"{self.spearman_rho:.2f} ({r0:.2f}..{r1:.2f}), top-{self.top} overlap {self.top_overlap}/{self.top}, "
                f"{self.archs} archs")


def spread_by_latency(candidates: Sequence[T], latency: Callable[[T], float], count: int,
                      rng: random.Random) -> List[T]:
    """``count`` candidates stratified over the latency range: one drawn at random from each of ``count``
    equally populated latency strata (all of them when there are fewer)."""
    ordered = sorted(dict.fromkeys(candidates), key=latency)
    if len(ordered) <= count:
        return ordered
    bounds = np.linspace(0, len(ordered), count + 1).round().astype(int)
    return [ordered[rng.randrange(lo, hi)] for lo, hi in zip(bounds[:-1], bounds[1:])]


def rank_agreement(oneshot: Sequence[float], standalone: Sequence[float], top: int = 5, resamples: int = 2000,
                   seed: int = 0) -> RankAgreement:
    """Kendall's tau and Spearman's rho of the two accuracies, bootstrap intervals, and the top overlap."""
    x, y = np.asarray(oneshot, float), np.asarray(standalone, float)
    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"rank agreement needs at least 3 paired accuracies, got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    taus, rhos = [], []
    for _ in range(resamples):
        index = rng.integers(0, len(x), len(x))
        if np.ptp(x[index]) and np.ptp(y[index]):  # a resample of one repeated arch has no ranking
            taus.append(kendalltau(x[index], y[index]).statistic)
            rhos.append(spearmanr(x[index], y[index]).statistic)
    top = min(top, max(1, len(x) // 2))  # the top of everything would always overlap fully
    overlap = len(set(np.argsort(-x)[:top]) & set(np.argsort(-y)[:top]))
    def interval(values):
        return tuple(float(v) for v in np.percentile(values, [5, 95])) if values else (math.nan, math.nan)

    if not (np.ptp(x) and np.ptp(y)):  # one side has no ranking at all
        return RankAgreement(len(x), math.nan, interval(taus), math.nan, interval(rhos), overlap, top)
    return RankAgreement(len(x), float(kendalltau(x, y).statistic), interval(taus),
                         float(spearmanr(x, y).statistic), interval(rhos), overlap, top)


def verdict(agreement: RankAgreement) -> str:
    """What the agreement means for the user's front, in plain words."""
    tau = agreement.kendall_tau
    if math.isnan(tau):
        return ("The rank check could not rank: the archs' one-shot or standalone accuracies are all equal "
                "(too little training or too few validation images to tell them apart).")
    if tau >= STRONG:
        return (f"One-shot accuracy ranks archs much as standalone training does (tau {tau:.2f}): the front and "
                "its finalists can be trusted.")
    if tau >= WEAK:
        return (f"One-shot accuracy ranks archs only roughly like standalone training (tau {tau:.2f}): treat "
                "neighbouring archs on the front as ties and compare finalists after fine-tuning.")
    return (f"WARNING: one-shot accuracy barely ranks archs like standalone training (tau {tau:.2f}): the front is "
            "mostly noise. Train the supernet longer (supernet.epochs), use sandwich sampling with distillation, "
            "or search with evaluation: standalone.")
