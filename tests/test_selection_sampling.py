"""Stochastic selectors: inclusion probabilities, uniformity, and Horvitz-Thompson unbiasedness."""

from __future__ import annotations

import pytest
import torch

from tiplight.selection import EntropySampling, RandomTokens, TokenStats
from tiplight.selection.sampling import inclusion_probabilities

DRAWS = 4000


def fixed_batch() -> TokenStats:
    """Two rollouts with skewed entropies: zeros, one dominant token, and invalid garbage."""
    entropy = torch.tensor(
        [
            [0.0, 0.01, 0.02, 0.05, 0.1, 0.3, 0.0, 0.6, 0.04, 0.08],
            [0.2, 0.2, 0.001, 0.5, 0.03, float("nan"), float("nan"), 0.07, 0.0, 0.4],
        ]
    )
    valid = ~entropy.isnan()
    valid[1, 8] = False
    return TokenStats.from_raw(entropy, entropy, entropy, valid)


def replicated(stats: TokenStats, n: int) -> TokenStats:
    """n copies of every rollout: one select call then gives n independent draws per rollout."""
    rep = [x.repeat(n, 1) for x in (stats.entropy, stats.rkl, stats.fkl, stats.valid)]
    return TokenStats.from_raw(*rep)


def test_inclusion_probabilities_are_capped_proportional_and_sum_to_k():
    sizes = torch.tensor([[8.0, 1.0, 1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0], [10.0, 3.0, 1.0, 1.0, 1.0]])
    k = torch.tensor([2, 3, 3])
    pi = inclusion_probabilities(sizes, k)
    torch.testing.assert_close(pi.sum(dim=1), k.double())
    assert pi[0, 0] == 1 and pi[0, 4] == 0  # a certainty; a zero size is never drawn
    torch.testing.assert_close(
        pi[0, 1:4] / sizes[0, 1:4].double(), torch.full((3,), 1 / 4, dtype=torch.float64)
    )
    torch.testing.assert_close(pi[1], torch.full((5,), 0.6, dtype=torch.float64))
    # 3.0 is not certain at first (3 * 3/16 < 1) but becomes certain once 10.0 is taken out (3 * 2/6 = 1).
    torch.testing.assert_close(pi[2], torch.tensor([1, 1, 1 / 3, 1 / 3, 1 / 3], dtype=torch.float64))


def test_entropy_sampling_includes_each_token_with_probability_proportional_to_entropy():
    stats = fixed_batch()
    sampler = EntropySampling(0.3, min_entropy=0.02)
    keep = sampler.select(replicated(stats, DRAWS), torch.Generator().manual_seed(0))
    freq = keep.reshape(DRAWS, *stats.valid.shape).double().mean(dim=0)  # [R, C]
    sizes = torch.where(stats.valid, stats.entropy.clamp_min(0.02), 0.0)
    pi = inclusion_probabilities(sizes, torch.floor(0.3 * stats.valid.sum(dim=1)).long())
    se = (pi * (1 - pi) / DRAWS).sqrt()
    assert ((freq - pi).abs() <= 4 * se + 1e-9).all()
    assert (freq[stats.valid & (stats.entropy == 0)] > 0).all()  # the floor reaches zero-entropy tokens


def test_importance_weights_make_the_all_token_sum_unbiased():
    stats = fixed_batch()
    values = torch.linspace(-1.0, 3.0, stats.valid.numel()).reshape(stats.valid.shape).where(stats.valid, 0.0)
    sampler = EntropySampling(0.2, importance_weights=True, min_entropy=0.02)
    n = 5 * DRAWS
    weights = sampler.select(replicated(stats, n), torch.Generator().manual_seed(1))
    weights = weights.reshape(n, *stats.valid.shape)  # [n, R, C]: n independent draws of the fixed batch
    estimates = (weights * values).sum(dim=(1, 2))  # [n]
    truth = values.sum()
    assert (estimates.mean() - truth).abs() < 4 * estimates.std() / n**0.5
    # Without the weights, the kept-token mean is visibly biased towards the high-entropy tokens.
    kept = weights > 0
    plain = (kept * values).sum(dim=(1, 2)) / kept.sum(dim=(1, 2))  # [n]
    assert (plain.mean() - truth / stats.valid.sum()).abs() > 10 * plain.std() / n**0.5


def test_importance_weights_are_unbiased_where_floor_retain_m_is_zero():
    """Rollouts of 3 and 4 tokens at retain 0.2 have floor(retain * m) = 0: with k rounded at random they
    still contribute, and the estimate of the all-token sum is unbiased within 4 standard errors."""
    entropy = torch.tensor(
        [[0.3, 0.05, 0.6, 0.0, 0.0, 0.0, 0.0], [0.1, 0.4, 0.02, 0.2, 0.0, 0.0, 0.0], [0.5] * 7]
    )
    valid = torch.tensor([[True] * 3 + [False] * 4, [True] * 4 + [False] * 3, [True] * 7])
    stats = TokenStats.from_raw(entropy, entropy, entropy, valid)
    values = torch.tensor([[2.0, 5.0, 1.0] + [0.0] * 4, [3.0, 1.0, 4.0, 2.0] + [0.0] * 3, [0.5] * 7])
    n = 5 * DRAWS
    sampler = EntropySampling(0.2, importance_weights=True, min_entropy=0.02)
    weights = sampler.select(replicated(stats, n), torch.Generator().manual_seed(5))
    estimates = (weights.reshape(n, *valid.shape) * values).sum(dim=(1, 2))  # [n]
    assert (estimates.mean() - values.sum()).abs() < 4 * estimates.std() / n**0.5


@pytest.mark.parametrize("budget", ["rollout", "batch"])
def test_weights_are_inverse_inclusion_probabilities_of_the_kept_tokens(budget):
    stats = fixed_batch()
    sampler = EntropySampling(0.5, importance_weights=True, budget=budget)
    weights = sampler.select(stats, torch.Generator().manual_seed(2))
    rows = (lambda x: x.reshape(1, -1)) if budget == "batch" else (lambda x: x)
    sizes = rows(torch.where(stats.valid, stats.entropy.clamp_min(1e-6), 0.0))
    target = 0.5 * rows(stats.valid).sum(dim=1).double()  # k rounded at random: the marginal pi
    k, up = target.floor().long(), (target - target.floor())[:, None]
    pi = (1 - up) * inclusion_probabilities(sizes, k) + up * inclusion_probabilities(sizes, k + 1)
    kept = rows(weights) > 0
    torch.testing.assert_close(rows(weights)[kept].double(), 1 / pi[kept], rtol=1e-5, atol=0)
    assert (weights[weights > 0] >= 1).all()


def test_random_tokens_are_uniform_over_valid_positions():
    stats = fixed_batch()
    keep = RandomTokens(0.5).select(replicated(stats, DRAWS), torch.Generator().manual_seed(3))
    freq = keep.reshape(DRAWS, *stats.valid.shape).double().mean(dim=0)
    m = stats.valid.sum(dim=1, keepdim=True)
    target = torch.floor(0.5 * m) / m
    assert ((freq - target).abs()[stats.valid] < 4 * (0.25 / DRAWS) ** 0.5).all()


@pytest.mark.parametrize("selector", [RandomTokens(0.3), EntropySampling(0.3)], ids=repr)
def test_different_seeds_draw_different_sets(selector):
    stats = fixed_batch()
    masks = [selector.select(stats, torch.Generator().manual_seed(s)) for s in range(8)]
    assert any(not torch.equal(masks[0], other) for other in masks[1:])
