"""Deterministic top-k selectors: each ranks by one score and keeps floor(retain * m) tokens."""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor

from tiplight.selection.base import Budget, Selector, check_budget, check_retain, register_selector
from tiplight.selection.budget import topk_mask
from tiplight.selection.token_stats import TokenStats


class TopK(Selector):
    """Keep the k = floor(retain * m) valid tokens with the highest ``score`` (TIP Eq. 8), ties to the
    earlier position. A subclass gives the score, its rule; it is registered, this base is not.

    Args:
        retain: fraction of each rollout's valid tokens to keep, in (0, 1].
        budget: "rollout" (k per rollout, Eq. 8) or "batch" (k over the flattened batch).
    """

    lowest: bool = False  # keep the k lowest scores instead

    def __init__(self, retain: float = 0.5, budget: Budget = "rollout") -> None:
        self.retain = check_retain(retain)
        self.budget = check_budget(budget)

    @abstractmethod
    def score(self, stats: TokenStats) -> Tensor:
        """The ranking score ``[R, C]``; only valid positions are compared."""

    def select(self, stats: TokenStats, generator: torch.Generator | None = None) -> Tensor:
        return topk_mask(self.score(stats), stats.valid, self.retain, self.budget, lowest=self.lowest)


@register_selector
class EntropyTopK(TopK):
    """Top-k by student entropy h_t (TIP Eq. 2): Soft-OR with delta_hat = 0, mentioned in §6, not reported."""

    def score(self, stats: TokenStats) -> Tensor:
        return stats.entropy


@register_selector
class DivergenceTopK(TopK):
    """Top-k by reverse KL delta_t = KL(P_S || P_T) (TIP Eq. 3): the Div-only ablation, App. B.2 / Table 8."""

    def score(self, stats: TokenStats) -> Tensor:
        return stats.rkl


@register_selector
class SoftOrTopK(TopK):
    """The TIP method: top-k by s_t = h_hat + delta_hat - h_hat * delta_hat (TIP Eq. 7-8).

    Args:
        lowest: keep the k lowest scores instead (the bottom-50% sanity check, Table 6).
    """

    def __init__(self, retain: float = 0.5, lowest: bool = False, budget: Budget = "rollout") -> None:
        super().__init__(retain, budget)
        self.lowest = lowest

    def score(self, stats: TokenStats) -> Tensor:
        h, d = stats.entropy_hat, stats.rkl_hat
        # the same value as h + d - h * d, but exactly 1 whenever h or d is 1 (no float32 rounding
        # below 1), so ties at the top stay ties and go to the earlier position
        return 1 - (1 - h) * (1 - d)


@register_selector
class OverconfidentTopK(TopK):
    """The Q3-only rule: top-k by w_t = KL(P_T || P_S) * (1 - h_hat) (TIP §7.3, Table 4).

    Raw forward KL times confidence, as the paper states it: confident tokens the teacher disagrees with.

    Args:
        retain: fraction of each rollout's valid tokens to keep, in (0, 1] (the paper uses 0.2 and 0.1).
    """

    def __init__(self, retain: float = 0.2, budget: Budget = "rollout") -> None:
        super().__init__(retain, budget)

    def score(self, stats: TokenStats) -> Tensor:
        return stats.fkl * (1 - stats.entropy_hat)
