"""The OPD baseline (every token) and the uniform-random control the paper lacks."""

from __future__ import annotations

import torch
from torch import Tensor

from tiplight.selection.base import Budget, Selector, check_budget, check_retain, register_selector
from tiplight.selection.budget import topk_mask
from tiplight.selection.token_stats import TokenStats


@register_selector
class AllTokens(Selector):
    """Every valid token: standard OPD, the reverse KL over all m response tokens (TIP Eq. 1, §2.1)."""

    def select(self, stats: TokenStats, generator: torch.Generator | None = None) -> Tensor:
        return stats.valid.clone()


@register_selector
class RandomTokens(Selector):
    """k = floor(retain * m) tokens per rollout, uniformly without replacement (a control for Eq. 8).

    Top-k over i.i.d. uniform keys drawn from `generator`, which is a uniform k-subset of the valid tokens.

    Args:
        retain: fraction of each rollout's valid tokens to keep, in (0, 1].
        budget: "rollout" (k per rollout) or "batch" (k over the flattened batch).
    """

    def __init__(self, retain: float = 0.5, budget: Budget = "rollout") -> None:
        self.retain = check_retain(retain)
        self.budget = check_budget(budget)

    def select(self, stats: TokenStats, generator: torch.Generator | None = None) -> Tensor:
        keys = torch.rand(stats.valid.shape, generator=generator, device=stats.valid.device)  # [R, C]
        return topk_mask(keys, stats.valid, self.retain, self.budget)
