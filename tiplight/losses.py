"""Per-position divergences between student and teacher next-token distributions.

Every function takes logits ``[N, V]`` (any float dtype), computes in float32 and returns ``[N]`` in nats.
They are pure: no reduction, no masking, no chunking (see ``tiplight.chunked_stats`` for the chunked callers).
A ``-inf`` logit is a probability of 0, and 0 * log 0 counts as 0: where a logit is ``-inf``, the
log-probabilities are clamped to the lowest float32 before any product, so no 0 * -inf turns into NaN
(a KL that is truly infinite comes out as a huge finite number instead). ``reverse_kl_grad``,
``forward_kl_grad`` and ``jsd_grad`` are the full-vocabulary divergences' gradients with respect to the
student's logits (``tiplight.objectives`` hands them to the fast paths instead of autograd),
``divergences_and_grad`` computes statistics, divergence and gradient in one go. ``topk_divergence`` and
``kl_estimate`` / ``clipped_policy_loss`` are the maths of the top-k and sampled-token objectives.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

LOG_ZERO = torch.finfo(torch.float32).min  # log 0, finite: 0 * LOG_ZERO == 0


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """float32 log-probabilities ``[N, V]`` with ``-inf`` clamped to ``LOG_ZERO``.

    The clamp (a copy that autograd keeps) is made only when some logit is ``-inf``."""
    logp = F.log_softmax(logits, -1, dtype=torch.float32)
    return logp.clamp(min=LOG_ZERO) if logits.numel() and bool(logits.amin() == float("-inf")) else logp


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy H(P) of ``softmax(logits)``: ``[N, V] -> [N]`` nats."""
    logp = _log_softmax(logits)  # [N, V]
    return -(logp.exp() * logp).sum(-1)


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) from clamped log-probabilities ``[N, V]`` (see ``_log_softmax``)."""
    p = logp.exp()
    return (p * (logp - logq)).sum(-1)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(P_S || P_T) per position, the OPD loss of TIP Eq. 1: ``[N, V], [N, V] -> [N]``."""
    return _kl(_log_softmax(student_logits), _log_softmax(teacher_logits))


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(P_T || P_S) per position (mode covering): ``[N, V], [N, V] -> [N]``."""
    return _kl(_log_softmax(teacher_logits), _log_softmax(student_logits))


def jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence (GKD, Agarwal et al. 2024): ``[N, V] -> [N]``.

    ``M = beta * P_T + (1 - beta) * P_S`` and ``JSD = beta * KL(P_T || M) + (1 - beta) * KL(P_S || M)``.
    ``beta = 0`` is 0 and ``beta = 1`` is 0 too (the mixture equals one side); use ``forward_kl`` or
    ``reverse_kl`` for the limits. ``beta = 0.5`` is the symmetric JSD, bounded by ``log 2``.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd: beta={beta} is out of range; allowed: 0 <= beta <= 1.")
    logp_s = _log_softmax(student_logits)  # [N, V]
    logp_t = _log_softmax(teacher_logits)  # [N, V]
    if beta in (0.0, 1.0):
        return torch.zeros(logp_s.shape[:-1], device=logp_s.device)
    log_m = torch.logsumexp(
        torch.stack([logp_t + math.log(beta), logp_s + math.log(1.0 - beta)]), dim=0
    )  # [N, V]
    return beta * _kl(logp_t, log_m) + (1.0 - beta) * _kl(logp_s, log_m)


# (P_S, P_T, log P_S - log P_T, scratch, KL(S||T), KL(T||S)) -> (divergence [N], d divergence / d student logits
# [N, V]): may overwrite its 2nd to 4th arguments and return one of them as the gradient
ClosedForm = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def reverse_kl_grad(p, q, diff, scratch, rkl, fkl):
    """d KL(S||T) / d s = P_S * (log P_S - log P_T - KL(S||T))."""
    return rkl, diff.sub_(rkl[:, None]).mul_(p)


def forward_kl_grad(p, q, diff, scratch, rkl, fkl):
    """d KL(T||S) / d s = P_S - P_T."""
    return fkl, torch.sub(p, q, out=scratch)


def jsd_grad(p, q, diff, scratch, rkl, fkl, beta: float):
    """JSD and its gradient ``(1 - beta) * P_S * (a - KL(S||M))`` with ``a = log P_S - log M``.

    From ``diff = log P_S - log P_T``: ``a = -log((1 - beta) + beta * exp(-diff))`` and
    ``log P_T - log M = -log(beta + (1 - beta) * exp(diff))``, each by ``logaddexp`` (no overflow, and no
    cancellation where a probability is 0 and ``diff`` is huge)."""
    a = torch.neg(diff, out=scratch).add_(math.log(beta))  # [N, V]
    a = torch.logaddexp(a, a.new_tensor(math.log(1.0 - beta)), out=a).neg_()  # log P_S - log M
    c = diff.add_(math.log(1.0 - beta))  # [N, V]
    c = torch.logaddexp(c, c.new_tensor(math.log(beta)), out=c).neg_()  # log P_T - log M
    kl_tm = q.mul_(c).sum(-1)
    kl_sm = torch.mul(p, a, out=c).sum(-1)
    return beta * kl_tm + (1.0 - beta) * kl_sm, a.sub_(kl_sm[:, None]).mul_(p).mul_(1.0 - beta)


def _log_probs(logits: torch.Tensor, consume: bool) -> torch.Tensor:
    """``_log_softmax`` without grad, written over ``logits`` when ``consume`` and it is float32 on CPU
    (where a fresh large tensor costs page faults; a GPU's caching allocator makes one cheap)."""
    if consume and logits.dtype == torch.float32 and logits.is_contiguous() and logits.device.type == "cpu":
        out = torch.log_softmax(logits, -1, out=logits)
    else:
        out = F.log_softmax(logits, -1, dtype=torch.float32)
    return out.clamp_(min=LOG_ZERO)


@torch.no_grad()
def divergences_and_grad(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, form: ClosedForm | None = None,
    consume: bool = False, workspace=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Student entropy, KL(S||T), KL(T||S) ``[N]`` and, given ``form``, a divergence ``[N]`` and its
    gradient with respect to the student's logits ``[N, V]`` (float32), all from one log-softmax each.

    The ``[N, V]`` temporaries are reused in place (4 allocations; 2 with ``consume``, which overwrites
    float32 CPU logits; none with a ``tiplight.heads.Workspace`` that reuses memory): on CPU every fresh
    large tensor costs page faults. The gradient may be one of those temporaries: use it before the next call.
    """
    logp_s = _log_probs(student_logits, consume)  # [N, V]
    logp_t = _log_probs(teacher_logits, consume)  # [N, V]
    take = workspace.take if workspace is not None else lambda *args: None
    p = torch.exp(logp_s, out=take("p", *logp_s.shape))  # [N, V] P_S
    scratch = torch.mul(p, logp_s, out=take("scratch", *logp_s.shape))  # [N, V]
    h = -scratch.sum(-1)
    diff = logp_s.sub_(logp_t)  # [N, V] log P_S - log P_T, finite
    rkl = torch.mul(p, diff, out=scratch).sum(-1)
    q = logp_t.exp_()  # [N, V] P_T
    fkl = -torch.mul(q, diff, out=scratch).sum(-1)
    if form is None:
        return h, rkl, fkl, None, None
    return h, rkl, fkl, *form(p, q, diff, scratch, rkl, fkl)


def token_divergences(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student entropy, KL(S||T) and KL(T||S) at once, without grad: ``[N, V] -> 3 x [N]``."""
    return divergences_and_grad(student_logits, teacher_logits)[:3]


def sampled_logprob(logits: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """log P(token) per position: ``[N, V], [N] -> [N]`` (float32)."""
    return _log_softmax(logits).gather(-1, token[:, None].long())[:, 0]


def topk_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, k: int, tail: bool = True,
                    direction: Literal["reverse", "forward"] = "reverse") -> torch.Tensor:
    """KL over the teacher's ``k`` most likely tokens only: ``[N, V], [N, V] -> [N]``.

    Both sides are read at the teacher's top-k tokens (what a served teacher ships); ``tail`` adds one
    bucket holding each side's remaining mass ``1 - sum_k P`` (verl's, NeMo RL's), otherwise both are
    renormalised over the k tokens (Revisiting OPD's top-32). ``direction``: KL(S||T) or KL(T||S).
    """
    logp_t = _log_softmax(teacher_logits)  # [N, V]
    top_t, index = logp_t.topk(min(k, logp_t.shape[-1]), dim=-1)  # [N, k]
    top_s = _log_softmax(student_logits).gather(-1, index)  # [N, k]
    if tail:
        top_s, top_t = (torch.cat([x, _log_rest(x)[:, None]], -1) for x in (top_s, top_t))  # [N, k + 1]
    else:
        top_s, top_t = (x - x.logsumexp(-1, keepdim=True) for x in (top_s, top_t))
    return _kl(top_s, top_t) if direction == "reverse" else _kl(top_t, top_s)


def _log_rest(logp: torch.Tensor) -> torch.Tensor:
    """``log(1 - sum exp(logp))`` per row ``[N, k] -> [N]``; 0 mass is ``log`` of float32's smallest
    normal number (finite, and the clamp stops the gradient that would be infinite there)."""
    rest = -torch.expm1(logp.logsumexp(-1))  # [N]
    return rest.clamp(min=torch.finfo(torch.float32).tiny).log()


def kl_estimate(log_r: torch.Tensor, estimator: Literal["k1", "k3"]) -> torch.Tensor:
    """Schulman's single-sample estimates of KL(S||T) at a token sampled from S, from ``log_r = log P_T -
    log P_S`` there, ``[N] -> [N]``: k1 = -log r (unbiased), k3 = r - 1 - log r (unbiased, >= 0, lower
    variance), clamped at 10 as verl does (r overflows where the student rules out the teacher's token)."""
    if estimator == "k1":
        return -log_r
    return (torch.expm1(log_r) - log_r).clamp(max=10.0)


def clipped_policy_loss(log_ratio: torch.Tensor, advantage: torch.Tensor, clip: float | None) -> torch.Tensor:
    """PPO's clipped surrogate per token, ``[N], [N] -> [N]``: ``-min(r A, clip(r, 1 - c, 1 + c) A)`` with
    ``r = exp(log_ratio)`` (gradient through ``log_ratio``); ``clip`` None is the plain ``-r A``."""
    ratio = log_ratio.exp()
    loss = -ratio * advantage
    if clip is None:
        return loss
    return torch.maximum(loss, -ratio.clamp(1.0 - clip, 1.0 + clip) * advantage)


def clipped_policy_grad(log_ratio: torch.Tensor, advantage: torch.Tensor, clip: float | None) -> torch.Tensor:
    """``d clipped_policy_loss / d log_ratio`` ``[N]``: ``-r A`` where the unclipped term is the larger or
    the ratio lies inside the clip range, 0 elsewhere (where the clipped constant wins)."""
    ratio = log_ratio.exp()
    grad = -ratio * advantage
    if clip is None:
        return grad
    inside = (ratio >= 1.0 - clip) & (ratio <= 1.0 + clip)
    return grad * (inside | (grad > -ratio.clamp(1.0 - clip, 1.0 + clip) * advantage))


def policy_grad(p, q, diff, scratch, rkl, fkl, *, token: torch.Tensor, estimator: Literal["k1", "k3"],
                clip: float | None, log_ratio: torch.Tensor | None = None,
                sampler_logprob: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampled-token policy loss ``[N]`` and its gradient ``g (onehot(token) - P_S)`` ``[N, V]`` with
    ``g = d loss / d log P_S(token)``, in ``divergences_and_grad``'s closed-form signature. The log ratio
    is ``log P_S(token) - sampler_logprob`` when given, else the constant ``log_ratio`` (0 when None)."""
    index = token[:, None].long()
    advantage = -kl_estimate(-diff.gather(-1, index)[:, 0], estimator)  # [N]
    if sampler_logprob is not None:
        log_ratio = p.gather(-1, index)[:, 0].log() - sampler_logprob
    elif log_ratio is None:
        log_ratio = torch.zeros_like(advantage)
    g = clipped_policy_grad(log_ratio, advantage, clip)  # [N]
    grad = torch.mul(p, -g[:, None], out=scratch).scatter_add_(-1, index, g[:, None])
    return clipped_policy_loss(log_ratio, advantage, clip), grad
