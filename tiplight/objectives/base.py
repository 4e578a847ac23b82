"""The `Objective` interface, the per-token context a loss may read, and the one registry of objectives."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Literal

from torch import Tensor

from tiplight.losses import ClosedForm
from tiplight.registry import Plugin, Registry

Denominator = Literal["kept", "valid"]


@dataclass(frozen=True)
class TokenContext:
    """What a loss may read at each position besides the two distributions; ``[R, C]`` for a micro-batch,
    ``[K]`` after ``at(mask)`` (in ``hidden[mask]`` order), then ``at(slice)`` for a chunk of those rows.

    ``token``: the sampled token each position predicts. ``sampler_logprob``: the log-probability the
    rollout engine drew it with, when the rollout carries one (else None: the student's own, ratio 1).
    ``sequence_log_ratio``: the mean over the rollout's valid tokens of ``log P_S - sampler_logprob``
    (no grad; None without sampler log-probabilities)."""

    token: Tensor
    sampler_logprob: Tensor | None = None
    sequence_log_ratio: Tensor | None = None

    def at(self, index: Tensor | slice) -> TokenContext:
        """The positions ``index`` selects (a bool mask ``[R, C]``, or a slice of ``[K]`` rows)."""
        return TokenContext(*(None if (x := getattr(self, f.name)) is None else x[index] for f in fields(self)))


class Objective(Plugin, ABC):
    """What the student minimises at the positions a selector keeps, and over what it averages.

    Subclasses take plain typed constructor arguments (LightningCLI builds them from YAML by
    ``class_path``) and hold no state beyond them. ``loss`` is the one required method and must be
    differentiable with respect to the student's logits: the autograd path serves any objective.
    ``closed_form`` is optional: a full-vocabulary divergence that has one gets the fast paths (the
    statistics pass's gradient for a frozen head; one pass without autograd for a plain head that trains).

    ``denominator``: the step's loss is the weighted sum over kept positions divided by the ``kept``
    tokens of the whole step across ranks (TIP's mean) or by its ``valid`` tokens (with importance-
    weighted selection, an unbiased all-token estimate).
    """

    denominator: Denominator

    def __init__(self, denominator: Denominator = "kept") -> None:
        if denominator not in ("kept", "valid"):
            raise ValueError(f"denominator={denominator!r} is not allowed; use one of kept, valid.")
        self.denominator = denominator

    @abstractmethod
    def loss(self, student_logits: Tensor, teacher_logits: Tensor, context: TokenContext | None) -> Tensor:
        """Per-position loss ``[N, V], [N, V] -> [N]`` (nats, float32) at positions described by ``context``."""

    def closed_form(self, context: TokenContext | None = None) -> ClosedForm | None:
        """The loss and its gradient with respect to the student's logits in ``losses.divergences_and_grad``'s
        form for rows described by ``context``, or None (autograd). The statistics pass asks without a
        context: an objective whose loss reads one answers None there and is served in the update."""
        return None



# the contract's names: register_objective (a class decorator), get_objective(name, **kwargs), list_objectives()
_REGISTRY: Registry[type[Objective]] = Registry(Objective, "objective")
register_objective = _REGISTRY.register
get_objective = _REGISTRY.build
list_objectives = _REGISTRY.names


def needs(context: TokenContext | None, objective: Objective) -> TokenContext:
    """``context``, or a clear error for an objective that reads the sampled tokens and was given none."""
    if context is None:
        raise ValueError(f"{type(objective).__name__} reads the sampled tokens; pass the rollout's TokenContext.")
    return context
