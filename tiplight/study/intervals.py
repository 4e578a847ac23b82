"""Means and 95% confidence intervals for small samples (Student's t), and paired differences."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class Interval:
    """A sample's mean with the half-width of its 95% confidence interval (NaN below 2 values)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)


@cache
def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` >= 1 degrees of freedom, solved from the exact tail
    P(T > t) = I_{df / (df + t^2)}(df / 2, 1 / 2) / 2 (mpmath's regularised incomplete beta; sympy's own
    dependency), to float precision for any ``df``: no table, no normal approximation."""
    import mpmath

    def excess(t: float):
        return mpmath.betainc(df / 2, 0.5, 0, df / (df + t * t), regularized=True) / 2 - 0.025

    return float(mpmath.findroot(excess, (1.95, 12.8), solver="anderson"))


def interval(values: list[float]) -> Interval:
    """Mean and 95% CI half-width (t-based) of ``values``."""
    n = len(values)
    if n == 0:
        return Interval(math.nan, math.nan, 0)
    mean = sum(values) / n
    if n == 1:
        return Interval(mean, math.nan, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean, t975(n - 1) * sd / math.sqrt(n), n)


def paired(values: dict[int, float], baseline: dict[int, float]) -> Interval:
    """The mean difference ``values - baseline`` over the seeds both have, with its 95% CI."""
    return interval([values[s] - baseline[s] for s in sorted(values.keys() & baseline.keys())])
