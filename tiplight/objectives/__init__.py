"""Objectives for on-policy distillation: the Objective interface, registry, and built-ins."""

from tiplight.objectives.base import (
    Denominator,
    Objective,
    TokenContext,
    get_objective,
    list_objectives,
    register_objective,
)
from tiplight.objectives.divergences import JSD, ForwardKL, ReverseKL
from tiplight.objectives.policy import SampledTokenPG
from tiplight.objectives.topk import TopKDivergence

__all__ = [
    "JSD",
    "Denominator",
    "ForwardKL",
    "Objective",
    "ReverseKL",
    "SampledTokenPG",
    "TokenContext",
    "TopKDivergence",
    "get_objective",
    "list_objectives",
    "register_objective",
]
