"""One seed for a run: ``seed_everything`` (LightningCLI) seeds the model, the data and the rollouts."""

from __future__ import annotations

import os


def resolve_seed(seed: int | None) -> int:
    """``seed`` if given, else the run's global seed (``seed_everything``, read from ``PL_GLOBAL_SEED``), else 0."""
    if seed is not None:
        return int(seed)
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def mixed_seed(seed: int, index: int) -> int:
    """The seed of draw ``index`` (a step, an epoch) of a run seeded ``seed``: cheap, distinct for every
    (seed, index) with index < 1,000,003, and stable across releases (checkpoints and studies rely on it)."""
    return (seed * 1_000_003 + index) % 2**63


def derived_seed(seed: int, key: int) -> int:
    """A seed that is a function of (``seed``, ``key``) alone (a splitmix64 finaliser), e.g. of a step's
    seed and a micro-batch's first rollout key, so draws do not depend on what was drawn before."""
    x = (seed * 0x9E3779B97F4A7C15 + key + 1) % 2**64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % 2**64
    return (x ^ (x >> 31)) % 2**63
