"""Type-aware combination of selectors, e.g. entropy top-k plus the overconfident tokens it misses."""

from __future__ import annotations

import torch
from torch import Tensor

from tiplight.selection.base import Selector, register_selector
from tiplight.selection.token_stats import TokenStats


@register_selector
class UnionSelector(Selector):
    """Keep a token when any member keeps it: T = T_1 ∪ ... ∪ T_n (TIP Remark 1 motivates H ∪ Q3).

    Members run in list order on the same `generator`. The result is a bool mask: a member that returns
    importance weights contributes its support (the tokens with weight > 0), not the weights.

    Args:
        selectors: one or more selectors, e.g. [EntropyTopK(0.2), OverconfidentTopK(0.1)].
    """

    def __init__(self, selectors: list[Selector]) -> None:
        if not selectors:
            raise ValueError(
                "selectors=[] is invalid; UnionSelector needs a non-empty list of Selector objects."
            )
        self.selectors = list(selectors)

    def select(self, stats: TokenStats, generator: torch.Generator | None = None) -> Tensor:
        keep = torch.zeros_like(stats.valid)  # [R, C]
        for selector in self.selectors:
            keep |= selector.select(stats, generator) != 0
        return keep
