"""Sampled-token OPD: the per-token reverse-KL estimate as a negative advantage in a policy gradient."""

from __future__ import annotations

from functools import partial
from typing import Literal

from torch import Tensor

from tiplight import losses
from tiplight.losses import ClosedForm
from tiplight.objectives.base import Denominator, Objective, TokenContext, needs, register_objective


@register_objective
class SampledTokenPG(Objective):
    """Policy gradient on the sampled token with advantage ``-k(log P_S, log P_T)`` (tinker-cookbook's
    OPD, verl's ``k1``/``k3``, prime-rl, slime): only the sampled token's log-probabilities enter the
    advantage, and the gradient is that of ``-ratio * A`` under PPO's clipping.

    The importance ratio is the trainer's probability of the token over the sampler's
    (``TokenContext.sampler_logprob``) when the rollout carries it, and exactly 1 otherwise (the
    student sampled it: the gradient is then ``k * grad log P_S(token)``). ``ratio: sequence`` uses the
    rollout's geometric-mean ratio (GSPO's) for every token of it, with each token's own gradient.
    The update's pass over the kept tokens uses the closed form ``losses.policy_grad`` (no autograd).

    Args:
        estimator: ``k1`` (log P_S - log P_T) or ``k3`` (r - 1 - log r, r = P_T / P_S).
        clip: PPO's clip range c (the ratio is clipped to [1 - c, 1 + c]); None: no clipping.
        ratio: importance ratio per ``token`` or per ``sequence``.
        denominator: divide the step's weighted sum by its ``kept`` tokens across ranks (TIP's mean) or by
            its ``valid`` tokens (with importance-weighted selection, an unbiased all-token mean).
    """

    def __init__(self, estimator: Literal["k1", "k3"] = "k1", clip: float | None = 0.2,
                 ratio: Literal["token", "sequence"] = "token", denominator: Denominator = "kept") -> None:
        if estimator not in ("k1", "k3"):
            raise ValueError(f"SampledTokenPG: estimator={estimator!r} is not allowed; use one of k1, k3.")
        if ratio not in ("token", "sequence"):
            raise ValueError(f"SampledTokenPG: ratio={ratio!r} is not allowed; use one of token, sequence.")
        if clip is not None and not 0.0 < clip < 1.0:
            raise ValueError(f"SampledTokenPG: clip={clip} is not allowed; use 0 < clip < 1 or null (no clipping).")
        super().__init__(denominator)
        self.estimator, self.clip, self.ratio = estimator, clip, ratio

    def loss(self, student_logits: Tensor, teacher_logits: Tensor, context: TokenContext | None) -> Tensor:
        context = needs(context, self)
        student = losses.sampled_logprob(student_logits, context.token)  # [N] with grad
        teacher = losses.sampled_logprob(teacher_logits, context.token).detach()
        advantage = -losses.kl_estimate(teacher - student.detach(), self.estimator)
        return losses.clipped_policy_loss(self.log_ratio(student, context), advantage, self.clip)

    def closed_form(self, context: TokenContext | None = None) -> ClosedForm | None:
        """Given the rows' context (the update's pass over kept tokens; the statistics pass has no
        sequence ratio yet, so it gets None): ``losses.policy_grad`` for them."""
        if context is None:
            return None
        if self.ratio == "sequence":
            extra = {"log_ratio": context.sequence_log_ratio}
        else:
            extra = {"sampler_logprob": context.sampler_logprob}
        return partial(losses.policy_grad, token=context.token, estimator=self.estimator, clip=self.clip, **extra)

    def log_ratio(self, student: Tensor, context: TokenContext) -> Tensor:
        """log of the importance ratio ``[N]``: its value per ``ratio``, its gradient ``grad log P_S``."""
        own = student - student.detach()  # 0, with the token's gradient
        if self.ratio == "sequence":
            return own if context.sequence_log_ratio is None else own + context.sequence_log_ratio
        return own if context.sampler_logprob is None else student - context.sampler_logprob
