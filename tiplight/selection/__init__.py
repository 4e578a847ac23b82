"""Token selection for on-policy distillation: statistics, the Selector interface, registry, built-ins."""

from tiplight.selection.base import (
    Selector,
    check_budget,
    check_retain,
    get_selector,
    list_selectors,
    register_selector,
)
from tiplight.selection.baseline import AllTokens, RandomTokens
from tiplight.selection.budget import budget_sizes, topk_mask
from tiplight.selection.quadrant import QuadrantSelector, planted_recall, quadrant_shares, quadrants
from tiplight.selection.sampling import EntropySampling
from tiplight.selection.token_stats import TokenStats
from tiplight.selection.topk import DivergenceTopK, EntropyTopK, OverconfidentTopK, SoftOrTopK, TopK
from tiplight.selection.union import UnionSelector

__all__ = [
    "AllTokens",
    "DivergenceTopK",
    "EntropySampling",
    "EntropyTopK",
    "OverconfidentTopK",
    "QuadrantSelector",
    "RandomTokens",
    "Selector",
    "SoftOrTopK",
    "TokenStats",
    "TopK",
    "UnionSelector",
    "budget_sizes",
    "check_budget",
    "check_retain",
    "get_selector",
    "list_selectors",
    "planted_recall",
    "quadrant_shares",
    "quadrants",
    "register_selector",
    "topk_mask",
]
