"""Statistics over seeds: means with t-distribution confidence intervals, differences paired by
seed, and the rule that names a winner only where the paired interval excludes zero."""

from __future__ import annotations

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

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0  # False for nan bounds: one seed proves nothing

    def format(self, digits: int = 3) -> str:
        if math.isnan(self.mean):
            return "-"
        if self.n < 2 or math.isnan(self.half_width):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean and t-interval: mean ± t_{(1+c)/2, n-1} * s / sqrt(n), s the sample standard deviation."""
    from scipy.stats import t

    xs = [float(v) for v in values if not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = sum(xs) / n
    if n < 2:
        return Estimate(mean, math.nan, math.nan, n)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Estimate:
    """The mean of a_i - b_i over pairs (one pair per seed) with its t-interval."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal counts, got {len(a)} and {len(b)}")
    return mean_ci([x - y for x, y in zip(a, b, strict=True)], confidence)


def winner(difference: Estimate, name: str, reference: str, lower_is_better: bool) -> str | None:
    """Which of ``name`` and ``reference`` is better given ``difference`` = name - reference, or None
    when its interval includes zero (no clear winner)."""
    if not difference.excludes_zero():
        return None
    name_lower = difference.high < 0
    return name if name_lower == lower_is_better else reference
