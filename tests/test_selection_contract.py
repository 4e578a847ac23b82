"""Contract tests every registered selector gets for free, plus the registry and bad-input errors."""

from __future__ import annotations

import math

import pytest
import torch
from plugin_example import LinearMixTopK  # registers a third-party selector: it gets the contracts too

from tiplight.selection import (
    EntropyTopK,
    OverconfidentTopK,
    Selector,
    TokenStats,
    UnionSelector,
    get_selector,
    list_selectors,
    register_selector,
)

REQUIRED_ARGS = {
    "QuadrantSelector": lambda: {"quadrants": ["Q1", "Q3"]},
    "UnionSelector": lambda: {"selectors": [EntropyTopK(0.2), OverconfidentTopK(0.1)]},
}
BUDGETED = [
    "RandomTokens",
    "EntropySampling",
    "EntropyTopK",
    "DivergenceTopK",
    "SoftOrTopK",
    "OverconfidentTopK",
]
STOCHASTIC = {"RandomTokens", "EntropySampling"}


def build(name: str, **kwargs: object) -> Selector:
    return get_selector(name, **{**REQUIRED_ARGS.get(name, dict)(), **kwargs})


def params(cases: list[tuple[str, dict]]) -> list:
    return [pytest.param(n, kw, id=n + "".join(f"-{k}={v}" for k, v in kw.items())) for n, kw in cases]


CASES = [(name, {}) for name in list_selectors()] + [
    ("EntropySampling", {"importance_weights": True}),
    ("SoftOrTopK", {"lowest": True}),
    ("SoftOrTopK", {"budget": "batch"}),
    ("RandomTokens", {"budget": "batch"}),
]
BUDGET_CASES = [(name, kwargs) for name, kwargs in CASES if hasattr(build(name, **kwargs), "retain")]
TOPK_CASES = [  # deterministic "keep the k highest" rules, ties to the earlier position
    case for case in BUDGET_CASES if case[0] not in STOCHASTIC and not case[1].get("lowest")
]


def make_stats(seed: int = 0, garbage: float = float("nan"), constant: bool = False) -> TokenStats:
    """Rows: all valid; every other position; all invalid; one valid token; valid prefix with ties."""
    g = torch.Generator().manual_seed(seed)
    valid = torch.zeros(5, 12, dtype=torch.bool)
    valid[0] = True
    valid[1, ::2] = True
    valid[3, 4] = True
    valid[4, :9] = True
    raw = [torch.rand(5, 12, generator=g) for _ in range(3)]
    raw[0][4], raw[1][4], raw[2][4] = 0.3, 0.3, 0.3  # row 4: every score tied
    if constant:
        raw = [torch.full((5, 12), 0.25) for _ in range(3)]
    return TokenStats.from_raw(*(torch.where(valid, x, garbage) for x in raw), valid)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("name", "kwargs"), params(CASES))
def test_output_is_a_finite_mask_or_weights_on_valid_tokens(name, kwargs):
    stats = make_stats()
    out = build(name, **kwargs).select(stats, seeded())
    assert out.shape == stats.valid.shape
    assert out.dtype == torch.bool or out.dtype.is_floating_point
    assert torch.isfinite(out.float()).all() and (out.float() >= 0).all()
    assert not ((out != 0) & ~stats.valid).any()
    assert not (out[2] != 0).any()  # the all-invalid row


@pytest.mark.parametrize(("name", "kwargs"), params(BUDGET_CASES))
def test_budgeted_selectors_keep_exactly_floor_retain_m(name, kwargs):
    selector = build(name, **kwargs)
    stats = make_stats()
    kept = (selector.select(stats, seeded()) != 0).sum(dim=1)
    m = stats.valid.sum(dim=1)
    # Horvitz-Thompson weights round k at random (E[k] = retain * m), so may keep one more
    extra = (0, 1) if getattr(selector, "importance_weights", False) else (0,)
    if getattr(selector, "budget", "rollout") == "batch":
        assert kept.sum() - math.floor(selector.retain * m.sum()) in extra
    else:
        assert all(k - math.floor(selector.retain * n) in extra for k, n in zip(kept.tolist(), m.tolist()))


@pytest.mark.parametrize(("name", "kwargs"), params(CASES))
def test_same_seed_same_selection_and_invalid_garbage_is_ignored(name, kwargs):
    selector = build(name, **kwargs)
    first = selector.select(make_stats(garbage=float("nan")), seeded(3))
    again = selector.select(make_stats(garbage=1e6), seeded(3))
    assert torch.equal(first, again)


@pytest.mark.parametrize(("name", "kwargs"), params(CASES))
@pytest.mark.parametrize("shape", [(0, 6), (3, 0)])
def test_empty_batches_keep_nothing(name, kwargs, shape):
    empty = torch.zeros(shape)
    stats = TokenStats.from_raw(empty, empty, empty, empty.bool())
    out = build(name, **kwargs).select(stats, seeded())
    assert out.shape == shape


@pytest.mark.parametrize(("name", "kwargs"), params(BUDGET_CASES))
def test_retain_one_keeps_every_valid_token(name, kwargs):
    stats = make_stats()
    out = build(name, **kwargs, retain=1.0).select(stats, seeded())
    assert torch.equal(out != 0, stats.valid)
    if out.dtype.is_floating_point:  # certain inclusion: Horvitz-Thompson weight 1
        assert torch.equal(out, stats.valid.float())


@pytest.mark.parametrize(("name", "kwargs"), params(TOPK_CASES))
def test_deterministic_top_k_breaks_ties_by_earlier_position(name, kwargs):
    selector = build(name, **kwargs)
    stats = make_stats(constant=True)
    out = selector.select(stats, seeded())
    rows = stats.valid.reshape(1, -1) if getattr(selector, "budget", "") == "batch" else stats.valid
    k = torch.floor(selector.retain * rows.sum(dim=1, keepdim=True))
    assert torch.equal(out.reshape(rows.shape), rows & (rows.cumsum(dim=1) <= k))


def test_registry_lists_every_built_in_sorted():
    names = list_selectors()
    assert names == sorted(names)
    assert set(BUDGETED) | {"AllTokens", "QuadrantSelector", "UnionSelector", "LinearMixTopK"} <= set(names)
    selector = get_selector("SoftOrTopK", retain=0.2, lowest=True)
    assert (selector.retain, selector.lowest) == (0.2, True)
    assert isinstance(get_selector("LinearMixTopK", alpha=0.3), LinearMixTopK)


def test_unknown_name_raises_with_the_known_names():
    with pytest.raises(
        ValueError, match=r"Unknown selector 'SoftOr'; registered selectors: AllTokens, DivergenceTopK"
    ):
        get_selector("SoftOr")


def test_registration_is_strict_about_names():

    class EntropyTopK(Selector):  # same name as a built-in, different class
        def select(self, stats, generator=None):
            return stats.valid

    with pytest.raises(ValueError, match="'EntropyTopK' is already registered"):
        register_selector(EntropyTopK)
    assert register_selector(LinearMixTopK) is LinearMixTopK  # re-registering the same class is a no-op
    with pytest.raises(TypeError, match="Selector subclass"):
        register_selector(dict)


@pytest.mark.parametrize("name", BUDGETED)
@pytest.mark.parametrize("retain", [0.0, -0.1, 1.5, float("nan")])
def test_bad_retain_fails_at_construction(name, retain):
    with pytest.raises(ValueError, match=r"retain=.* must be a fraction in \(0, 1\]"):
        get_selector(name, retain=retain)


@pytest.mark.parametrize("name", BUDGETED)
def test_bad_budget_fails_at_construction(name):
    with pytest.raises(ValueError, match="budget='token' is invalid; allowed values: 'rollout', 'batch'"):
        get_selector(name, budget="token")


@pytest.mark.parametrize("quadrants", [["Q5"], [], ["Q1", "q3"]])
def test_bad_quadrants_fail_at_construction(quadrants):
    with pytest.raises(ValueError, match="non-empty list drawn from Q1, Q2, Q3, Q4"):
        get_selector("QuadrantSelector", quadrants=quadrants)


def test_empty_union_and_bad_sampling_floor_fail_at_construction():
    with pytest.raises(ValueError, match="non-empty list of Selector"):
        UnionSelector([])
    with pytest.raises(ValueError, match=r"min_entropy=0\.0 is invalid"):
        get_selector("EntropySampling", min_entropy=0.0)
    with pytest.raises(ValueError, match=r"alpha=2\.0 is invalid"):
        LinearMixTopK(alpha=2.0)


def test_token_stats_rejects_mismatched_shapes():
    ok = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"TokenStats\.rkl has shape"):
        TokenStats(ok, torch.zeros(2, 4), ok, ok.bool(), ok, ok)
    with pytest.raises(ValueError, match="bool tensor"):
        TokenStats(ok, ok, ok, ok, ok, ok)
