"""The `Selector` interface and the one registry of selectors (registry key = class name)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal, TypeVar, get_args

import torch
from torch import Tensor

from tiplight.selection.stats import TokenStats

Budget = Literal["rollout", "batch"]  # k per rollout (TIP Eq. 8) or over the flattened batch
BUDGETS: tuple[str, ...] = get_args(Budget)


class Selector(ABC):
    """Decides which tokens carry the distillation loss.

    Subclasses take plain typed constructor arguments (LightningCLI builds them from YAML by
    `class_path`), hold no state beyond those arguments, never see the model or the trainer, and draw
    randomness only from the `generator` passed to `select`.
    """

    @abstractmethod
    def select(self, stats: TokenStats, generator: torch.Generator | None = None) -> Tensor:
        """Keep mask `[R, C]`: bool, a subset of `stats.valid`; or float weights, > 0 exactly where kept."""

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={value!r}" for name, value in vars(self).items())
        return f"{type(self).__name__}({args})"


_REGISTRY: dict[str, type[Selector]] = {}
SelectorClass = TypeVar("SelectorClass", bound=type[Selector])


def register_selector(cls: SelectorClass) -> SelectorClass:
    """Class decorator: make `cls` buildable by its class name through `get_selector`.

    A second class with a taken name raises; re-importing the same module (same qualified name) does not.
    """
    if not (isinstance(cls, type) and issubclass(cls, Selector)):
        raise TypeError(f"register_selector expects a Selector subclass; got {cls!r}.")
    name = cls.__name__
    known = _REGISTRY.get(name)
    if known is not None and _qualified(known) != _qualified(cls):
        raise ValueError(
            f"A selector named {name!r} is already registered ({_qualified(known)}); rename the class."
        )
    _REGISTRY[name] = cls
    return cls


def get_selector(name: str, **kwargs: object) -> Selector:
    """Build the registered selector `name` with `kwargs`, e.g. `get_selector("SoftOrTopK", retain=0.2)`."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown selector {name!r}; registered selectors: {', '.join(list_selectors())}.")
    return _REGISTRY[name](**kwargs)


def list_selectors() -> list[str]:
    """Names of all registered selectors, sorted."""
    return sorted(_REGISTRY)


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


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
