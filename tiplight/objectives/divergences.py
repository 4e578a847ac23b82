"""Full-vocabulary divergences at each kept position, each with its closed-form gradient (the fast paths)."""

from __future__ import annotations

from functools import partial

from torch import Tensor

from tiplight import losses
from tiplight.losses import ClosedForm
from tiplight.objectives.base import Denominator, Objective, TokenContext, register_objective


@register_objective
class ReverseKL(Objective):
    """KL(P_S || P_T) over the full vocabulary: the OPD loss of TIP Eq. 1 and Eq. 9 (mode seeking).

    Args:
        denominator: divide the step's weighted sum by its ``kept`` tokens across ranks (TIP's mean) or by
            its ``valid`` tokens (with importance-weighted selection, an unbiased all-token mean).
    """

    def loss(self, student_logits: Tensor, teacher_logits: Tensor, context: TokenContext | None = None) -> Tensor:
        return losses.reverse_kl(student_logits, teacher_logits)

    def closed_form(self, context: TokenContext | None = None) -> ClosedForm:
        return losses.reverse_kl_grad


@register_objective
class ForwardKL(Objective):
    """KL(P_T || P_S) over the full vocabulary (mode covering; supervised KD's loss).

    Args:
        denominator: divide the step's weighted sum by its ``kept`` tokens across ranks (TIP's mean) or by
            its ``valid`` tokens (with importance-weighted selection, an unbiased all-token mean).
    """

    def loss(self, student_logits: Tensor, teacher_logits: Tensor, context: TokenContext | None = None) -> Tensor:
        return losses.forward_kl(student_logits, teacher_logits)

    def closed_form(self, context: TokenContext | None = None) -> ClosedForm:
        return losses.forward_kl_grad


@register_objective
class JSD(Objective):
    """Generalised Jensen-Shannon divergence (GKD, Agarwal et al. 2024) with ``M = beta P_T + (1 - beta) P_S``.

    Args:
        beta: the teacher's weight in the mixture, 0 < beta < 1 (0.5: the symmetric JSD; the limits are
            ``ForwardKL`` and ``ReverseKL`` up to scale).
        denominator: divide the step's weighted sum by its ``kept`` tokens across ranks (TIP's mean) or by
            its ``valid`` tokens (with importance-weighted selection, an unbiased all-token mean).
    """

    def __init__(self, beta: float = 0.5, denominator: Denominator = "kept") -> None:
        if not 0.0 < beta < 1.0:
            raise ValueError(f"JSD: beta={beta} is not allowed; choose 0 < beta < 1.")
        super().__init__(denominator)
        self.beta = float(beta)

    def loss(self, student_logits: Tensor, teacher_logits: Tensor, context: TokenContext | None = None) -> Tensor:
        return losses.jsd(student_logits, teacher_logits, self.beta)

    def closed_form(self, context: TokenContext | None = None) -> ClosedForm:
        return partial(losses.jsd_grad, beta=self.beta)
