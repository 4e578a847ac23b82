"""The divergence over the teacher's top-k tokens: what a teacher served apart can ship."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from tiplight import losses
from tiplight.objectives.base import Denominator, Objective, TokenContext, register_objective


@register_objective
class TopKDivergence(Objective):
    """KL between student and teacher read at the teacher's ``k`` most likely tokens only (verl's
    ``forward_kl_topk``, NeMo RL's k=64, Revisiting OPD's renormalised top-32 reverse KL).

    Args:
        k: how many of the teacher's most likely tokens each position keeps (>= 1).
        tail: add a bucket with each side's remaining probability mass; False renormalises both over the k.
        direction: ``reverse`` KL(S||T) or ``forward`` KL(T||S) over those k (+ 1) outcomes.
        denominator: divide the step's weighted sum by its ``kept`` tokens across ranks (TIP's mean) or by
            its ``valid`` tokens (with importance-weighted selection, an unbiased all-token mean).
    """

    def __init__(self, k: int = 64, tail: bool = True, direction: Literal["reverse", "forward"] = "reverse",
                 denominator: Denominator = "kept") -> None:
        if k < 1:
            raise ValueError(f"TopKDivergence: k={k} is not allowed; use an integer >= 1.")
        if direction not in ("reverse", "forward"):
            raise ValueError(f"TopKDivergence: direction={direction!r} is not allowed; use one of reverse, forward.")
        super().__init__(denominator)
        self.k, self.tail, self.direction = k, tail, direction

    def loss(self, student_logits: Tensor, teacher_logits: Tensor, context: TokenContext | None = None) -> Tensor:
        return losses.topk_divergence(student_logits, teacher_logits, self.k, self.tail, self.direction)
