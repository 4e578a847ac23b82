"""DistillModule's option groups: small frozen dataclasses that LightningCLI shows nested, with their docs
(``--model.memory.chunk_size``; ``model: {memory: {chunk_size: 256}}`` in YAML), as litgpt's ``TrainArgs``."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal


def _at_least_one(group: str, **values: int | None) -> None:
    """One sentence for the first value below 1 (None: unset, allowed)."""
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"model.{group}.{name}={value} is not allowed; use an integer >= 1.")


@dataclass(frozen=True)
class Memory:
    """How much is computed at once: these bound memory and never change the result.

    Args:
        micro_batch_size: rollouts per forward/backward on each rank (None: all of them at once).
        chunk_size: positions per lm_head chunk in statistics and loss (bounds the logits' memory).
        gradient_checkpointing: recompute the student's decoder activations in backward.
        generation_batch_size: rollouts generated at once (bounds generation memory).
    """

    micro_batch_size: int | None = None
    chunk_size: int = 512
    gradient_checkpointing: bool = False
    generation_batch_size: int = 64

    def __post_init__(self) -> None:
        _at_least_one("memory", micro_batch_size=self.micro_batch_size, chunk_size=self.chunk_size,
                      generation_batch_size=self.generation_batch_size)


@dataclass(frozen=True)
class Optimization:
    """The update around the optimizer (``model.optimizer``): schedule, clipping, empty steps.

    Args:
        lr_schedule: the learning-rate schedule over ``trainer.max_steps``.
        warmup_steps: steps of linear warm-up from 0 to the optimizer's learning rate.
        min_lr_ratio: the cosine schedule's final learning rate, as a fraction of the peak.
        grad_clip: clip the gradient norm to this value (None: no clipping).
        max_empty_steps: stop with an error after this many consecutive steps in which no token was kept
            anywhere (skipped steps do not count toward ``max_steps``, so such a run would never end).
    """

    lr_schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    max_empty_steps: int = 20

    def __post_init__(self) -> None:
        _at_least_one("optimization", max_empty_steps=self.max_empty_steps)


@dataclass(frozen=True)
class Logging:
    """What each step logs beyond loss and kept fraction; nothing here changes training.

    Args:
        entropy_threshold: the quadrants' entropy threshold (None: the step's median).
        divergence_threshold: the quadrants' divergence threshold (None: the step's median).
        planted_errors: dotted path of the world's planted-error mask, a function (prompt, completion
            tokens) -> list[bool] (``tiplight.toy.planted.planted_error_mask`` for the overconfident toy
            world); then each step logs how the kept set meets them (``planted/recall``, ``precision``,
            ``share``; with ``stats_scope: batch``, as the kept quadrant shares). None: not logged.
    """

    entropy_threshold: float | None = None
    divergence_threshold: float | None = None
    planted_errors: str | None = None


GROUPS = {"memory": Memory, "optimization": Optimization, "logging": Logging}


def moved_option(option: str) -> str | None:
    """``model.<group>.<name>`` for a flat ``model.<name>`` that moved into a group, else None."""
    prefix, _, name = option.partition(".")
    if prefix != "model":
        return None
    return next((f"model.{group}.{name}" for group, cls in GROUPS.items()
                 if name in {f.name for f in fields(cls)}), None)
