"""TIP quadrants (Table 1): diagnostics for logging and a selector that keeps chosen quadrants.

Axes are entropy_hat (H) and rkl_hat (D). A token is "high" on an axis when its value is strictly above
the threshold (the paper gives none; default: the median over valid tokens, open question 5), so ties
at the threshold count as low. Ids: 0 invalid, 1 = Q1 high-H/high-D, 2 = Q2 high-H/low-D,
3 = Q3 low-H/high-D (overconfident), 4 = Q4 low-H/low-D (solved).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tiplight.selection.base import Selector, register_selector
from tiplight.selection.token_stats import TokenStats

QUADRANTS = ("Q1", "Q2", "Q3", "Q4")


def quadrants(
    stats: TokenStats, entropy_threshold: float | None = None, divergence_threshold: float | None = None
) -> Tensor:
    """Quadrant id per token, long `[R, C]`: 0 at invalid positions, 1..4 for Q1..Q4.

    Thresholds are in normalised units (entropy_hat, rkl_hat); None means the median over valid tokens.
    """
    high_h = _above(stats.entropy_hat, stats.valid, entropy_threshold)
    high_d = _above(stats.rkl_hat, stats.valid, divergence_threshold)
    ids = 1 + 2 * (~high_h).long() + (~high_d).long()  # [R, C]
    return torch.where(stats.valid, ids, 0)


def quadrant_shares(quadrant_ids: Tensor, mask: Tensor) -> dict[str, float]:
    """Share of each quadrant among the valid positions where `mask` is nonzero (bool or float weights).

    Returns {"Q1": share, ..., "Q4": share}: sums to 1, or all 0 when no valid position is masked.
    """
    ids = quadrant_ids[(mask != 0) & (quadrant_ids > 0)]  # [N]
    counts = torch.bincount(ids, minlength=5)[1:5].double()
    shares = counts / counts.sum() if ids.numel() else counts
    return dict(zip(QUADRANTS, shares.tolist()))


def planted_recall(planted: Tensor, keep: Tensor, valid: Tensor) -> dict[str, float]:
    """How a kept set meets a world's planted errors (``tiplight.planted``), over valid positions.

    Args:
        planted / keep / valid: bool ``[R, C]`` (keep may be float weights: nonzero = kept).

    Returns:
        {"recall": planted tokens kept / planted tokens, "precision": planted tokens kept / kept tokens,
        "share": planted tokens / valid tokens}; NaN where the denominator is 0 (no planted, kept or valid
        token).
    """
    valid = valid.bool()
    planted, kept = planted.bool() & valid, (keep != 0) & valid
    hits, n_planted, n_kept, n_valid = (int(x.sum()) for x in (planted & kept, planted, kept, valid))
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    return {"recall": ratio(hits, n_planted), "precision": ratio(hits, n_kept), "share": ratio(n_planted, n_valid)}


def _above(x: Tensor, valid: Tensor, threshold: float | None) -> Tensor:
    """`x > threshold` `[R, C]`; the default threshold is the (lower) median of x over valid tokens."""
    if threshold is None:
        values = x[valid]
        threshold = values.median() if values.numel() else x.new_tensor(0.0)
    return x > threshold


@register_selector
class QuadrantSelector(Selector):
    """Keep the valid tokens of the chosen TIP quadrants (Table 1); e.g. ["Q3"] keeps overconfident ones.

    Args:
        quadrants: non-empty subset of "Q1", "Q2", "Q3", "Q4".
        entropy_threshold: high/low split on entropy_hat; None = median over valid tokens of the scope.
        divergence_threshold: high/low split on rkl_hat; None = median over valid tokens of the scope.
    """

    def __init__(
        self,
        quadrants: list[str],
        entropy_threshold: float | None = None,
        divergence_threshold: float | None = None,
    ) -> None:
        unknown = [q for q in quadrants if q not in QUADRANTS]
        if not quadrants or unknown:
            raise ValueError(
                f"quadrants={quadrants!r} is invalid; give a non-empty list drawn from {', '.join(QUADRANTS)}."
            )
        self.quadrants = list(quadrants)
        self.entropy_threshold = entropy_threshold
        self.divergence_threshold = divergence_threshold

    def select(self, stats: TokenStats, generator: torch.Generator | None = None) -> Tensor:
        ids = quadrants(stats, self.entropy_threshold, self.divergence_threshold)  # [R, C]
        chosen = torch.tensor([QUADRANTS.index(q) + 1 for q in self.quadrants], device=ids.device)
        return torch.isin(ids, chosen)
