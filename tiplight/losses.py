"""Per-position divergences between student and teacher next-token distributions.

Every function takes logits ``[N, V]`` (any float dtype), computes in float32 and returns ``[N]`` in nats.
They are pure: no reduction, no masking, no chunking (see ``tiplight.stats`` for the chunked callers).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Divergence = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy H(P) of ``softmax(logits)``: ``[N, V] -> [N]`` nats."""
    logp = F.log_softmax(logits.float(), dim=-1)  # [N, V]
    return -(logp.exp() * logp).sum(-1)


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) from log-probabilities ``[N, V]``; 0 * log 0 counts as 0."""
    p = logp.exp()
    return (p * (logp - logq)).sum(-1)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(P_S || P_T) per position, the OPD loss of TIP Eq. 1: ``[N, V], [N, V] -> [N]``."""
    return _kl(F.log_softmax(student_logits.float(), -1), F.log_softmax(teacher_logits.float(), -1))


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(P_T || P_S) per position (mode covering): ``[N, V], [N, V] -> [N]``."""
    return _kl(F.log_softmax(teacher_logits.float(), -1), F.log_softmax(student_logits.float(), -1))


def jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence (GKD, Agarwal et al. 2024): ``[N, V] -> [N]``.

    ``M = beta * P_T + (1 - beta) * P_S`` and ``JSD = beta * KL(P_T || M) + (1 - beta) * KL(P_S || M)``.
    ``beta = 0`` is 0 and ``beta = 1`` is 0 too (the mixture equals one side); use ``forward_kl`` or
    ``reverse_kl`` for the limits. ``beta = 0.5`` is the symmetric JSD, bounded by ``log 2``.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd: beta={beta} is out of range; allowed: 0 <= beta <= 1.")
    logp_s = F.log_softmax(student_logits.float(), -1)  # [N, V]
    logp_t = F.log_softmax(teacher_logits.float(), -1)  # [N, V]
    if beta in (0.0, 1.0):
        return torch.zeros(logp_s.shape[:-1], device=logp_s.device)
    log_m = torch.logsumexp(
        torch.stack([logp_t + math.log(beta), logp_s + math.log(1.0 - beta)]), dim=0
    )  # [N, V]
    return beta * _kl(logp_t, log_m) + (1.0 - beta) * _kl(logp_s, log_m)


@torch.no_grad()
def token_divergences(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student entropy, KL(S||T) and KL(T||S) at once, without grad: ``[N, V] -> 3 x [N]``.

    For statistics only. The log-softmaxes are shared, and the function's own ``[N, V]`` temporaries are
    reused in place (4 allocations instead of 8): on CPU every fresh large tensor costs page faults.
    """
    logp_s = F.log_softmax(student_logits.float(), -1)  # [N, V]
    logp_t = F.log_softmax(teacher_logits.float(), -1)  # [N, V]
    p = logp_s.exp()  # [N, V] P_S, later P_T
    prod = p * logp_s  # [N, V] scratch for the products
    h = -prod.sum(-1)
    diff = logp_s.sub_(logp_t)  # [N, V] log P_S - log P_T, in place
    rkl = torch.mul(p, diff, out=prod).sum(-1)
    fkl = -torch.mul(torch.exp(logp_t, out=p), diff, out=prod).sum(-1)
    return h, rkl, fkl


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
        return lambda s, t: jsd(s, t, beta)
    raise ValueError(f"divergence={name!r} is unknown; allowed: {', '.join(DIVERGENCES)}.")
