"""A third-party selector, as a plugin author writes it (the README example; tested in test_selection_*)."""

from __future__ import annotations

import torch
from torch import Tensor

from tiplight.selection import Selector, TokenStats, check_retain, register_selector, topk_mask


@register_selector  # optional: also makes get_selector("LinearMixTopK") and the short class_path work
class LinearMixTopK(Selector):
    """Top-k per rollout by a linear mix of the TIP axes, alpha * h_hat + (1 - alpha) * delta_hat.

    A linear alternative to Soft-OR (TIP Eq. 7): alpha = 1 ranks by entropy, alpha = 0 by divergence.

    Args:
        retain: fraction of each rollout's valid tokens to keep, in (0, 1].
        alpha: weight of the entropy axis, in [0, 1].
    """

    def __init__(self, retain: float = 0.5, alpha: float = 0.5) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha!r} is invalid; it must lie in [0, 1].")
        self.retain = check_retain(retain)
        self.alpha = alpha

    def select(self, stats: TokenStats, generator: torch.Generator | None = None) -> Tensor:
        score = self.alpha * stats.entropy_hat + (1 - self.alpha) * stats.rkl_hat  # [R, C]
        return topk_mask(score, stats.valid, self.retain)  # bool [R, C], ties -> earlier position
