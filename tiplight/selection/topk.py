"""Deterministic top-k selectors: each ranks by one score and keeps floor(retain * m) tokens."""

from __future__ import annotations

import torch
from torch import Tensor

from tiplight.selection.base import Budget, Selector, check_budget, check_retain, register_selector
from tiplight.selection.budget import topk_mask
from tiplight.selection.stats import TokenStats


@register_selector
class EntropyTopK(Selector):
    """Top-k by student entropy h_t (TIP Eq. 2): Soft-OR with delta_hat = 0, mentioned in §6, not reported.

    Args:
        retain: fraction of each rollout's valid tokens to keep, in (0, 1].
        budget: "rollout" (k per rollout, Eq. 8) or "batch" (k over the flattened batch).
    """

    def __init__(self, retain: float = 0.5, budget: Budget = "rollout") -> None:
        self.retain = check_retain(retain)
        self.budget = check_budget(budget)

    def select(self, stats: TokenStats, generator: torch.Generator | None = None) -> Tensor:
        return topk_mask(stats.entropy, stats.valid, self.retain, self.budget)


@register_selector
class DivergenceTopK(Selector):
    """Top-k by reverse KL delta_t = KL(P_S || P_T) (TIP Eq. 3): the Div-only ablation, App. B.2 / Table 8.

    Args:
        retain: fraction of each rollout's valid tokens to keep, in (0, 1].
        budget: "rollout" (k per rollout, Eq. 8) or "batch" (k over the flattened batch).
    """

    def __init__(self, retain: float = 0.5, budget: Budget = "rollout") -> None:
        self.retain = check_retain(retain)
        self.budget = check_budget(budget)

    def select(self, stats: TokenStats, generator: torch.Generator | None = None) -> Tensor:
        return topk_mask(stats.rkl, stats.valid, self.retain, self.budget)


@register_selector
class SoftOrTopK(Selector):
    """The TIP method: top-k by s_t = h_hat + delta_hat - h_hat * delta_hat (TIP Eq. 7-8).

    Args:
        retain: fraction of each rollout's valid tokens to keep, in (0, 1].
        lowest: keep the k lowest scores instead (the bottom-50% sanity check, Table 6).
        budget: "rollout" (k per rollout, Eq. 8) or "batch" (k over the flattened batch).
    """

    def __init__(self, retain: float = 0.5, lowest: bool = False, budget: Budget = "rollout") -> None:
        self.retain = check_retain(retain)
        self.lowest = lowest
        self.budget = check_budget(budget)

    def select(self, stats: TokenStats, generator: torch.Generator | None = None) -> Tensor:
        h, d = stats.entropy_hat, stats.rkl_hat
        return topk_mask(h + d - h * d, stats.valid, self.retain, self.budget, lowest=self.lowest)


@register_selector
class OverconfidentTopK(Selector):
    """The Q3-only rule: top-k by w_t = KL(P_T || P_S) * (1 - h_hat) (TIP §7.3, Table 4).

    Raw forward KL times confidence, as the paper states it: confident tokens the teacher disagrees with.

    Args:
        retain: fraction of each rollout's valid tokens to keep, in (0, 1] (the paper uses 0.2 and 0.1).
        budget: "rollout" (k per rollout, Eq. 8) or "batch" (k over the flattened batch).
    """

    def __init__(self, retain: float = 0.2, budget: Budget = "rollout") -> None:
        self.retain = check_retain(retain)
        self.budget = check_budget(budget)

    def select(self, stats: TokenStats, generator: torch.Generator | None = None) -> Tensor:
        return topk_mask(stats.fkl * (1 - stats.entropy_hat), stats.valid, self.retain, self.budget)
