"""Behaviour of the normalisation, the deterministic rules, the quadrant diagnostics and the union."""

from __future__ import annotations

import inspect

import pytest
import torch

from tiplight.selection import (
    DivergenceTopK,
    EntropySampling,
    EntropyTopK,
    OverconfidentTopK,
    QuadrantSelector,
    SoftOrTopK,
    TokenStats,
    UnionSelector,
    quadrant_shares,
    quadrants,
    topk_mask,
)


def random_stats(rows: int = 6, cols: int = 20, seed: int = 0, levels: int = 0) -> TokenStats:
    """Random stats with ragged valid prefixes; `levels` > 0 quantises the values to force ties."""
    g = torch.Generator().manual_seed(seed)
    raw = [torch.rand(rows, cols, generator=g) for _ in range(3)]
    if levels:
        raw = [torch.floor(x * levels) / levels for x in raw]
    valid = torch.arange(cols) < torch.randint(0, cols + 1, (rows, 1), generator=g)
    return TokenStats.from_raw(*raw, valid)


def reference_topk(
    scores: torch.Tensor, valid: torch.Tensor, retain: float, lowest: bool = False
) -> torch.Tensor:
    """The rule spelled out with Python sorting: best score first, then earlier position."""
    keep = torch.zeros_like(valid)
    for r in range(len(scores)):
        positions = [c for c in range(scores.shape[1]) if valid[r, c]]
        sign = 1 if lowest else -1
        positions.sort(key=lambda c: (sign * scores[r, c].item(), c))
        keep[r, positions[: int(retain * len(positions))]] = True
    return keep


def test_from_raw_clips_entropy_at_its_98th_percentile_then_min_max_scales():
    g = torch.Generator().manual_seed(1)
    entropy, rkl = torch.rand(4, 50, generator=g), torch.rand(4, 50, generator=g) * 3
    valid = torch.rand(4, 50, generator=g) < 0.8
    garbage = torch.tensor(float("nan"))
    stats = TokenStats.from_raw(entropy.where(valid, garbage), rkl.where(valid, garbage), rkl, valid.long())
    h, d = entropy[valid], rkl[valid]
    clipped = h.clamp(max=torch.quantile(h, 0.98))
    torch.testing.assert_close(stats.entropy_hat[valid], (clipped - h.min()) / (clipped.max() - h.min()))
    torch.testing.assert_close(stats.rkl_hat[valid], (d - d.min()) / (d.max() - d.min()))
    assert (stats.entropy_hat[~valid] == 0).all() and (stats.rkl_hat[~valid] == 0).all()
    assert (stats.entropy_hat[valid] == 1).sum() >= 2  # the clipped top 2% all reach the maximum


def test_constant_scope_normalises_to_zeros_not_nan():
    valid = torch.tensor([[True, True, False]])
    stats = TokenStats.from_raw(torch.full((1, 3), 0.4), torch.ones(1, 3), torch.ones(1, 3), valid)
    assert torch.equal(stats.entropy_hat, torch.zeros(1, 3)) and torch.equal(stats.rkl_hat, torch.zeros(1, 3))


@pytest.mark.parametrize("levels", [0, 3])
@pytest.mark.parametrize(
    ("selector", "score"),
    [
        (EntropyTopK(0.5), lambda s: s.entropy),
        (DivergenceTopK(0.3), lambda s: s.rkl),
        (SoftOrTopK(0.2), lambda s: 1 - (1 - s.entropy_hat) * (1 - s.rkl_hat)),
        (SoftOrTopK(0.5, lowest=True), lambda s: 1 - (1 - s.entropy_hat) * (1 - s.rkl_hat)),
        (OverconfidentTopK(0.1), lambda s: s.fkl * (1 - s.entropy_hat)),
    ],
    ids=lambda v: None if inspect.isfunction(v) else repr(v),  # a lambda's repr holds its address: not stable
)
def test_top_k_rules_match_the_rule_spelled_out(selector, score, levels):
    stats = random_stats(levels=levels)
    expected = reference_topk(score(stats), stats.valid, selector.retain, getattr(selector, "lowest", False))
    assert torch.equal(selector.select(stats), expected)


def test_lowest_keeps_the_complement_at_half():
    stats = random_stats(rows=8, cols=30, seed=4)
    stats = TokenStats.from_raw(
        stats.entropy, stats.rkl, stats.fkl, stats.valid & (stats.valid.cumsum(1) <= 20)
    )
    top, bottom = SoftOrTopK(0.5).select(stats), SoftOrTopK(0.5, lowest=True).select(stats)
    even = stats.valid.sum(dim=1) % 2 == 0
    assert not (top & bottom).any()
    assert torch.equal((top | bottom)[even], stats.valid[even])


def test_soft_or_ties_at_score_one_go_to_the_earlier_position():
    """Every token clipped at the 98th entropy percentile has h_hat = 1, so its score is exactly 1 (the
    contract's tie, broken by position); `h + d - h * d` in float32 gives 0.99999994 for d = 0.3."""
    d = torch.tensor([[0.3, 0.7, 0.1, 0.9, 0.33, 0.51, 0.2, 0.6]])
    ones = torch.ones_like(d)
    stats = TokenStats(d, d, d, ones.bool(), entropy_hat=ones, rkl_hat=d)
    assert SoftOrTopK(0.5).select(stats).tolist() == [[True] * 4 + [False] * 4]


def four_quadrant_batch() -> tuple[TokenStats, torch.Tensor]:
    """One rollout of 4 tokens per TIP quadrant, Q1..Q4 in blocks; returns stats and the true ids."""
    h = torch.tensor([0.9] * 4 + [0.8] * 4 + [0.02] * 4 + [0.01] * 4)[None]
    d = torch.tensor([2.0] * 4 + [0.1] * 4 + [1.9] * 4 + [0.05] * 4)[None]
    ids = torch.arange(16)[None] // 4 + 1  # [1, 16]
    return TokenStats.from_raw(h, d, d * 1.5, torch.ones_like(h, dtype=torch.bool)), ids


def test_soft_or_keeps_overconfident_tokens_that_entropy_top_k_misses():
    stats, ids = four_quadrant_batch()
    q3 = ids == 3
    assert not (EntropyTopK(0.5).select(stats) & q3).any()
    assert torch.equal(SoftOrTopK(0.5).select(stats), (ids == 1) | q3)


def test_overconfident_top_k_prefers_low_entropy_high_forward_kl():
    stats, ids = four_quadrant_batch()
    assert torch.equal(OverconfidentTopK(0.25).select(stats), ids == 3)


def test_batch_budget_spends_the_whole_batch_k_where_scores_are_highest():
    valid = torch.ones(2, 10, dtype=torch.bool)
    rkl = torch.cat([torch.full((1, 10), 5.0), torch.rand(1, 10)])
    stats = TokenStats.from_raw(torch.rand(2, 10), rkl, rkl, valid)
    keep = DivergenceTopK(0.5, budget="batch").select(stats)
    assert keep.sum(dim=1).tolist() == [10, 0]


def test_quadrant_ids_follow_table_1_and_thresholds_are_configurable():
    stats, ids = four_quadrant_batch()
    assert torch.equal(quadrants(stats), ids)  # median split
    high_bar = quadrants(stats, entropy_threshold=1.0, divergence_threshold=0.0)
    assert torch.equal(high_bar, torch.where(ids == 4, 4, 3))  # nothing is high-H; Q4's delta_hat == 0
    half = TokenStats.from_raw(stats.entropy, stats.rkl, stats.fkl, stats.valid & (ids <= 2))
    assert (quadrants(half)[~half.valid] == 0).all()


def test_quadrant_shares_sum_to_one_over_the_mask_and_zero_when_empty():
    stats, _ = four_quadrant_batch()
    assert quadrant_shares(quadrants(stats), stats.valid) == {"Q1": 0.25, "Q2": 0.25, "Q3": 0.25, "Q4": 0.25}
    kept = SoftOrTopK(0.5).select(stats)
    assert quadrant_shares(quadrants(stats), kept) == {"Q1": 0.5, "Q2": 0.0, "Q3": 0.5, "Q4": 0.0}
    weights = kept.float() * 3.0  # float weights count where > 0
    assert quadrant_shares(quadrants(stats), weights) == quadrant_shares(quadrants(stats), kept)
    assert set(quadrant_shares(quadrants(stats), torch.zeros_like(kept)).values()) == {0.0}


def test_quadrant_selector_keeps_exactly_the_chosen_quadrants():
    stats, ids = four_quadrant_batch()
    assert torch.equal(QuadrantSelector(["Q3"]).select(stats), ids == 3)
    assert torch.equal(QuadrantSelector(["Q4", "Q2"]).select(stats), (ids == 2) | (ids == 4))


def test_union_keeps_what_any_member_keeps_as_a_bool_mask():
    stats = random_stats(seed=7)
    members = [EntropyTopK(0.2), OverconfidentTopK(0.1), EntropySampling(0.1, importance_weights=True)]
    union = UnionSelector(members).select(stats, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    expected = torch.zeros_like(stats.valid)
    for member in members:
        expected |= member.select(stats, g) > 0
    assert union.dtype == torch.bool and torch.equal(union, expected)
    assert union.sum() > EntropyTopK(0.2).select(stats).sum()


def test_topk_mask_is_public_for_plugins_and_handles_per_row_budgets():
    scores = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, True, False], [False, True, True, True]])
    assert topk_mask(scores, valid, 0.7).tolist() == [[True, False, True, False], [False, True, True, False]]
