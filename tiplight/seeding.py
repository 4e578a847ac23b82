"""One seed for a run: ``seed_everything`` (LightningCLI) seeds the model, the data and the rollouts."""

from __future__ import annotations

import os


def resolve_seed(seed: int | None) -> int:
    """``seed`` if given, else the run's global seed (``seed_everything``, read from ``PL_GLOBAL_SEED``), else 0."""
    if seed is not None:
        return int(seed)
    return int(os.environ.get("PL_GLOBAL_SEED", 0))
