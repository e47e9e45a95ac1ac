"""Statistics over seeds: means with t-distribution confidence intervals, differences paired by
seed with their t-test, Holm's correction for a family of such tests, and effect sizes."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Estimate:
    """A mean over n values with its two-sided confidence interval (nan bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def format(self, digits: int = 3) -> str:
        if math.isnan(self.mean):
            return "-"
        if self.n < 2 or math.isnan(self.half_width):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean and t-interval: mean ± t_{(1+c)/2, n-1} * s / sqrt(n), s the sample standard deviation."""
    xs = [float(v) for v in values if not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = sum(xs) / n
    if n < 2:
        return Estimate(mean, math.nan, math.nan, n)
    half = _t_quantile((1 + confidence) / 2, n - 1) * math.sqrt(_variance(xs) / n)
    return Estimate(mean, mean - half, mean + half, n)


@functools.cache
def _t_quantile(q: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))  # a millisecond a call: tables with many rows ask for the same few


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Estimate:
    """The mean of a_i - b_i over pairs (one pair per seed) with its t-interval."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal counts, got {len(a)} and {len(b)}")
    return mean_ci([x - y for x, y in zip(a, b, strict=True)], confidence)


def paired_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test of ``a`` against ``b`` (scipy); nan where there is no
    test: fewer than 2 pairs, or the same difference in every pair (a zero-width interval)."""
    from scipy.stats import ttest_rel

    pairs = [(float(x), float(y)) for x, y in zip(a, b, strict=True) if not (math.isnan(x) or math.isnan(y))]
    diffs = [x - y for x, y in pairs]
    if len(pairs) < 2 or max(diffs) == min(diffs):
        return math.nan
    return float(ttest_rel([x for x, _ in pairs], [y for _, y in pairs]).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values of one family of m tests: the i-th smallest p (from 0) times
    m - i, made non-decreasing in that order and capped at 1. A nan (no test) stays nan and does not
    count towards m. (statsmodels' `multipletests` gives the same numbers but runs a full garbage
    collection on every call and brings pandas: 0.1 s to seconds a table, 150 MB of install.)"""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, p * (len(tested) - rank)))
        adjusted[i] = running
    return adjusted


def effect_size(a: Sequence[float], b: Sequence[float]) -> float:
    """The mean paired difference a - b in units of the seed-to-seed spread (the root mean of the two
    sides' sample variances over seeds): how many seeds' worth of noise the difference is."""
    spread = math.sqrt((_variance(a) + _variance(b)) / 2)
    mean = paired_difference(a, b).mean
    return mean / spread if spread > 0 else math.nan


def _variance(values: Sequence[float]) -> float:
    xs = [float(v) for v in values if not math.isnan(float(v))]
    if len(xs) < 2:
        return math.nan
    mean = sum(xs) / len(xs)
    return sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
