"""The `Selector` interface and the one registry of selectors (registry key = class name)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal, get_args

import torch
from torch import Tensor

from tiplight.registry import Plugin, Registry
from tiplight.selection.token_stats import TokenStats

Budget = Literal["rollout", "batch"]  # k per rollout (TIP Eq. 8) or over the flattened batch
BUDGETS: tuple[str, ...] = get_args(Budget)


class Selector(Plugin, ABC):
    """Decides which tokens carry the distillation loss.

    Subclasses take plain typed constructor arguments (LightningCLI builds them from YAML by
    `class_path`), hold no state beyond those arguments, never see the model or the trainer, and draw
    randomness only from the `generator` passed to `select`.
    """

    @abstractmethod
    def select(self, stats: TokenStats, generator: torch.Generator | None = None) -> Tensor:
        """Keep mask `[R, C]`: bool, a subset of `stats.valid`; or float weights, > 0 exactly where kept."""



# the contract's names: register_selector (a class decorator), get_selector(name, **kwargs), list_selectors()
_REGISTRY: Registry[type[Selector]] = Registry(Selector, "selector")
register_selector = _REGISTRY.register
get_selector = _REGISTRY.build
list_selectors = _REGISTRY.names


def check_retain(retain: float) -> float:
    """Validate a retention ratio at construction time: it must lie in (0, 1]."""
    if not 0.0 < retain <= 1.0:
        raise ValueError(f"retain={retain!r} is invalid; it must be a fraction in (0, 1], e.g. 0.5.")
    return float(retain)


def check_budget(budget: str) -> str:
    """Validate the budget granularity: per `rollout` (TIP Eq. 8) or per `batch` (flattened)."""
    if budget not in BUDGETS:
        raise ValueError(f"budget={budget!r} is invalid; allowed values: {', '.join(map(repr, BUDGETS))}.")
    return budget




def selector_weights(selector: Selector, stats: TokenStats, generator: torch.Generator | None = None) -> Tensor:
    """``[R, C]`` float weights of ``selector`` on ``stats`` (0 = not kept, 1 = kept for masks), zero at
    invalid positions. A selector that raises, or returns anything but a tensor shaped like ``stats.valid``,
    is one sentence naming it (not a shape error deep inside the loss)."""
    name = type(selector).__name__
    try:
        keep = selector.select(stats, generator=generator)  # bool mask or float weights
    except Exception as error:  # a plug-in selector's own bug
        raise ValueError(f"model.selector {name} raised {type(error).__name__}: {error}.") from error
    shape = tuple(stats.valid.shape)
    if not isinstance(keep, Tensor) or tuple(keep.shape) != shape:
        got = f"shape {tuple(keep.shape)}" if isinstance(keep, Tensor) else type(keep).__name__
        raise ValueError(f"model.selector {name} returned {got} for statistics of shape {shape}; a selector "
                         "returns a bool mask or float weights shaped like stats.valid [R, C].")
    return keep.float() * stats.valid
