"""Means over seeds with Student t confidence intervals, and differences paired by seed.

    mean_ci([0.91, 0.93, 0.92])                      # Estimate(mean=0.92, std=0.01, low=..., high=...)
    paired_difference([0.91, 0.93], [0.90, 0.90])    # run minus reference, seed by seed

A few seeds are all a comparison usually affords, so the interval uses the t distribution with n - 1
degrees of freedom rather than a normal one; pairing by seed removes what two runs of the same seed
share (data order, initial draws) from the noise (the paired t interval; Student 1908, "The probable
error of a mean"). With one value there is no spread to estimate, and no interval is given.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence

LEVEL = 0.95  # confidence level of the intervals


@dataclass(frozen=True)
class Estimate:
    """The mean of n values, their sample std and a t interval of the mean; std and interval None when n = 1."""

    mean: float
    n: int
    std: Optional[float]  # sample std (n - 1 in the denominator)
    low: Optional[float]  # the interval's lower bound
    high: Optional[float]  # the interval's upper bound
    level: float  # confidence level of [low, high]

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    @property
    def half_width(self) -> Optional[float]:
        return (self.high - self.low) / 2 if self.low is not None and self.high is not None else None


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Estimate:
    """Mean, sample std and the Student t interval mean ± t(n-1) · std / √n of `values`."""
    if not values:
        raise ValueError("no value to average")
    if not 0 < level < 1:
        raise ValueError(f"a confidence level lies in (0, 1), got {level}")
    mean, n = statistics.fmean(values), len(values)
    if n == 1:
        return Estimate(mean, 1, None, None, None, level)
    # scipy.stats takes over a second to import; only a comparison's report needs it
    from scipy.stats import t

    std = statistics.stdev(values)
    half = float(t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return Estimate(mean, n, std, mean - half, mean + half, level)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Estimate:
    """The mean of the per-pair differences a[i] - b[i] and its t interval (a paired t interval)."""
    if len(a) != len(b):
        raise ValueError(f"paired values come in pairs; got {len(a)} and {len(b)}")
    return mean_ci([x - y for x, y in zip(a, b)], level)


def verdict(difference: Estimate) -> str:
    """In words, higher being better: within the noise (the interval holds 0), or clearly above or below 0?"""
    if difference.low is None or difference.high is None:
        return "one seed: no interval"
    if difference.low > 0:
        return "clearly better"
    if difference.high < 0:
        return "clearly worse"
    return "within the noise"


__all__ = ["LEVEL", "Estimate", "mean_ci", "paired_difference", "verdict"]
