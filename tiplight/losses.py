"""Per-position divergences between student and teacher next-token distributions.

Every function takes logits ``[N, V]`` (any float dtype), computes in float32 and returns ``[N]`` in nats.
They are pure: no reduction, no masking, no chunking (see ``tiplight.stats`` for the chunked callers).
A ``-inf`` logit is a probability of 0, and 0 * log 0 counts as 0: where a logit is ``-inf``, the
log-probabilities are clamped to the lowest float32 before any product, so no 0 * -inf turns into NaN
(a KL that is truly infinite comes out as a huge finite number instead). ``closed_form`` gives each
built-in divergence's gradient with respect to the student's logits (``tiplight.objective`` uses it
instead of autograd), ``divergences_and_grad`` computes statistics, divergence and gradient in one go.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

Divergence = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
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


def _reverse_kl_grad(p, q, diff, scratch, rkl, fkl):
    """d KL(S||T) / d s = P_S * (log P_S - log P_T - KL(S||T))."""
    return rkl, diff.sub_(rkl[:, None]).mul_(p)


def _forward_kl_grad(p, q, diff, scratch, rkl, fkl):
    """d KL(T||S) / d s = P_S - P_T."""
    return fkl, torch.sub(p, q, out=scratch)


def _jsd_grad(p, q, diff, scratch, rkl, fkl, beta: float):
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


def closed_form(divergence: Divergence) -> ClosedForm | None:
    """The closed-form gradient of a built-in divergence (``get_divergence``'s), None for any other."""
    if divergence is reverse_kl:
        return _reverse_kl_grad
    if divergence is forward_kl:
        return _forward_kl_grad
    if isinstance(divergence, partial) and divergence.func is jsd and not divergence.args:
        beta = divergence.keywords.get("beta", 0.5)
        return partial(_jsd_grad, beta=beta) if 0.0 < beta < 1.0 else None
    return None


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


DIVERGENCES = ("reverse_kl", "forward_kl", "jsd")


def get_divergence(name: str, beta: float = 0.5) -> Divergence:
    """The per-position divergence ``(student_logits, teacher_logits) -> [N]`` called ``name``."""
    if name == "reverse_kl":
        return reverse_kl
    if name == "forward_kl":
        return forward_kl
    if name == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd_beta={beta} is not allowed; choose 0 < jsd_beta < 1.")
        return partial(jsd, beta=beta)
    raise ValueError(f"divergence={name!r} is unknown; allowed: {', '.join(DIVERGENCES)}.")
