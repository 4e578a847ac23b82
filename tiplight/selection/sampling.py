"""Entropy sampling (TIP §2.2, Table 3) with optional Horvitz-Thompson weights (App. A.3).

Sampling design: systematic probability-proportional-to-size (PPS) sampling with a random start, per
budget row. Inclusion probabilities are pi_t = min(1, c * x_t), x_t = max(h_t, min_entropy), with c set
so that sum_t pi_t = k; tokens with pi_t = 1 are kept for certain. The other tokens are laid end to end
in position order as intervals of length pi_t, and the k' remaining points u, u + 1, ..., u + k' - 1
(u ~ U[0, 1) from the generator) pick the intervals they land in. Each token is then kept with
probability exactly pi_t, exactly k tokens are kept, and the picks spread along the rollout.

With importance weights, k is rounded at random: k = floor(retain * m) + 1 with probability
frac(retain * m), so a rollout with floor(retain * m) = 0 still keeps a token sometimes. Each token's
inclusion probability is then pi_t = (1 - f) * pi_t(k) + f * pi_t(k + 1) > 0, and weights w_t = 1 / pi_t
make sum_t w_t * x_t an unbiased estimate of the sum over all valid tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tiplight.selection.base import Budget, Selector, check_budget, check_retain, register_selector
from tiplight.selection.budget import budget_rows, budget_sizes
from tiplight.selection.token_stats import TokenStats


def inclusion_probabilities(sizes: Tensor, k: Tensor) -> Tensor:
    """pi = min(1, c * sizes) per row with sum(pi) = k, for sizes >= 0. `[R, C]`, `[R]` -> float64 `[R, C]`.

    The classic certainty loop: tokens with c * x >= 1 are kept for sure and c is recomputed over the
    rest. c never decreases, so the certain set only grows and the loop stops (in a few rounds for
    real entropy profiles) at the unique solution.
    """
    sizes = sizes.double()
    k = k.double()[:, None]  # [R, 1]
    certain = torch.zeros_like(sizes, dtype=torch.bool)
    while True:
        rest = torch.where(certain, 0.0, sizes).sum(1, keepdim=True)  # [R, 1]
        scale = (k - certain.sum(1, keepdim=True)) / rest.clamp_min(torch.finfo(torch.float64).tiny)
        grown = certain | ((scale * sizes >= 1.0) & (sizes > 0))
        if torch.equal(grown, certain):
            return torch.where(certain, 1.0, scale * sizes)
        certain = grown


def systematic_pps(sizes: Tensor, k: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Draw exactly k[r] tokens of row r with P(keep t) = pi_t. Returns keep bool and pi float64, `[R, C]`."""
    pi = inclusion_probabilities(sizes, k)
    certain = pi >= 1.0
    n_rest = (k - certain.sum(1)).double()[:, None]  # [R, 1]
    cum = torch.where(certain, 0.0, pi).cumsum(1)  # [R, C]
    # x / x == 1 exactly in IEEE arithmetic, so the last column is exactly n_rest: exactly k' points land.
    cum = cum / cum[:, -1:].clamp_min(torch.finfo(torch.float64).tiny) * n_rest
    prev = torch.cat([cum.new_zeros(len(cum), 1), cum[:, :-1]], 1)
    u = torch.rand(len(cum), 1, generator=generator, device=cum.device, dtype=torch.float64)
    hit = torch.floor(cum - u) > torch.floor(prev - u)
    return certain | hit, torch.where(certain, 1.0, cum - prev)


def rounded_systematic_pps(
    sizes: Tensor, target: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """`systematic_pps` of k = floor(target) or floor(target) + 1 tokens (the second with probability
    frac(target)), so E[k] = target. Returns keep bool and the marginal pi float64, `[R, C]`, `[R]`."""
    k = torch.floor(target).long()
    up = (target - k).clamp(0.0, 1.0)[:, None]  # [R, 1]
    pi = (1 - up) * inclusion_probabilities(sizes, k) + up * inclusion_probabilities(sizes, k + 1)
    draw_up = torch.rand(len(sizes), 1, generator=generator, device=sizes.device, dtype=torch.float64) < up
    keep, _ = systematic_pps(sizes, k + draw_up[:, 0].long(), generator)
    return keep, pi


@register_selector
class EntropySampling(Selector):
    """k = floor(retain * m) tokens per rollout drawn with probability proportional to h_t (TIP §2.2);
    with importance weights, k is floor(retain * m) or one more (E[k] = retain * m: unbiased).

    Design: systematic PPS (see the module docstring), so pi_t = min(1, c * h_t) exactly.

    Args:
        retain: fraction of each rollout's valid tokens to keep, in (0, 1].
        importance_weights: return float weights 1 / pi_t at kept tokens (0 elsewhere) instead of a bool
            mask: sum_t w_t * loss_t is then an unbiased estimate of the all-token loss sum (App. A.3);
            divide it by the valid-token count, not the kept count. k is then rounded at random (see the
            module docstring), so a rollout with floor(retain * m) = 0 contributes too.
        min_entropy: floor on h_t so that zero-entropy tokens keep a small, nonzero chance (and finite
            weight); without it HT would be unbiased only over tokens with h_t > 0.
        budget: "rollout" (k per rollout) or "batch" (k over the flattened batch).
    """

    def __init__(
        self,
        retain: float = 0.5,
        importance_weights: bool = False,
        min_entropy: float = 1e-6,
        budget: Budget = "rollout",
    ) -> None:
        if not min_entropy > 0:
            raise ValueError(f"min_entropy={min_entropy!r} is invalid; it must be > 0, e.g. 1e-6.")
        self.retain = check_retain(retain)
        self.importance_weights = importance_weights
        self.min_entropy = float(min_entropy)
        self.budget = check_budget(budget)

    def select(self, stats: TokenStats, generator: torch.Generator | None = None) -> Tensor:
        sizes = budget_rows(
            torch.where(stats.valid, stats.entropy.clamp_min(self.min_entropy), 0.0), self.budget
        )
        rows_valid = budget_rows(stats.valid, self.budget)  # [R', C']
        if not self.importance_weights:
            keep, _ = systematic_pps(sizes, budget_sizes(rows_valid, self.retain), generator)
            return keep.reshape(stats.valid.shape)
        m = rows_valid.sum(dim=1, dtype=torch.float64)
        target = torch.maximum(self.retain * m, budget_sizes(rows_valid, self.retain).double())  # [R']
        keep, pi = rounded_systematic_pps(sizes, target, generator)
        weights = torch.where(keep, 1.0 / pi.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
        return weights.float().reshape(stats.valid.shape)
