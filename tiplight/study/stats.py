"""Means and 95% confidence intervals for small samples (Student's t), and paired differences."""

from __future__ import annotations

import math
from dataclasses import dataclass

# two-sided 95% quantiles of Student's t by degrees of freedom (beyond 30: 1.96 is within 2%)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)


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


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` >= 1 degrees of freedom."""
    return _T975[df - 1] if df <= len(_T975) else 1.96


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
