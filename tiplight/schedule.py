"""Learning-rate schedules over optimizer steps, as factors of the optimizer's learning rate."""

from __future__ import annotations

import math
from typing import Literal


def lr_factor(step: int, *, schedule: Literal["cosine", "constant"], warmup_steps: int, total_steps: int,
              min_lr_ratio: float = 0.0) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to ``min_lr_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
