"""Token budgets and exact, tie-stable top-k: the shared machinery of the budgeted selectors."""

from __future__ import annotations

import torch
from torch import Tensor

from tiplight.selection.base import Budget

# Absorbs float error in retain * m (0.29 * 100 = 28.999999999999996) without moving a true fraction.
_FLOOR_EPS = 1e-6


def budget_rows(x: Tensor, budget: str) -> Tensor:
    """View `[R, C]` as the rows a budget applies to: itself per rollout, `[1, R*C]` per batch.

    Row-major flattening keeps (row, position) order, so "earlier" stays well defined per batch.
    """
    return x.reshape(1, -1) if budget == "batch" else x


def budget_sizes(valid: Tensor, retain: float) -> Tensor:
    """k = floor(retain * m) per row, m = valid tokens of the row (TIP Eq. 8). `[R]` bool -> `[R]` long."""
    m = valid.sum(dim=1, dtype=torch.float64)
    return torch.floor(retain * m + _FLOOR_EPS).long()


def topk_mask(
    scores: Tensor, valid: Tensor, retain: float, budget: Budget = "rollout", lowest: bool = False
) -> Tensor:
    """Keep the k highest-scoring valid tokens per budget row; ties go to the earlier position.

    Args:
        scores: `[R, C]` float; values at invalid positions are ignored (may be NaN).
        valid: `[R, C]` bool.
        retain: fraction in (0, 1]; k = floor(retain * valid tokens) per rollout or per batch.
        budget: "rollout" or "batch".
        lowest: keep the k lowest scores instead.
    Returns:
        `[R, C]` bool, a subset of `valid` with exactly k True per budget row.
    """
    rows_scores, rows_valid = budget_rows(scores, budget), budget_rows(valid, budget)  # [R', C']
    keys = rows_scores.to(torch.promote_types(rows_scores.dtype, torch.float32))  # keep float64 as is
    keys = -keys if lowest else keys
    # Finite keys for valid tokens (nan_to_num also maps +-inf to finite), -inf at invalid positions.
    keys = torch.where(rows_valid, keys.nan_to_num(nan=0.0), float("-inf"))
    k = budget_sizes(rows_valid, retain)[:, None]  # [R', 1]
    kth = kth_largest(keys, k[:, 0])[:, None]  # [R', 1]
    above, tied = keys > kth, keys == kth
    # Of the tokens tied with the k-th largest score, keep the earliest ones that still fit the budget.
    keep = above | (tied & (tied.cumsum(dim=1) <= k - above.sum(dim=1, keepdim=True)))
    return keep.reshape(scores.shape)


def kth_largest(keys: Tensor, k: Tensor) -> Tensor:
    """k[r]-th largest value of row r of `keys` `[R, C]` -> `[R]`; +inf where k[r] == 0.

    One batched top-k with a per-row k: row r is padded with k_max - k[r] copies of +inf, so the
    smallest of its k_max largest values is its k[r]-th largest real value. An unsorted top-k is
    several times faster on CPU than a full (stable) sort.
    """
    k_max = int(k.max()) if k.numel() else 0
    if k_max == 0:
        return keys.new_full((len(keys),), float("inf"))
    pad = torch.arange(k_max, device=keys.device) < (k_max - k)[:, None]  # [R, k_max]
    padded = torch.cat([keys, torch.where(pad, float("inf"), float("-inf"))], dim=1)  # [R, C + k_max]
    return padded.topk(k_max, dim=1, sorted=False).values.amin(dim=1)
