"""The differentiable part of a step: the divergence at kept positions only.

The student's lm_head is applied with grad only to the hidden states of kept positions, ``chunk_size``
at a time, and each chunk is recomputed in backward (activation checkpointing). The graph therefore
holds ``[K, d]`` hidden states and never ``[K, V]`` logits: the peak of the loss is bounded by one
chunk's logits even when every token is kept. The teacher's logits are recomputed from its hidden
states inside the chunk, so they are never held for all positions either.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tiplight.losses import Divergence
from tiplight.stats import head_logits


def _chunk_loss(
    hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    weights: torch.Tensor,
    student_head: nn.Module,
    teacher_head: nn.Module,
    divergence: Divergence,
    vocab_size: int,
) -> torch.Tensor:
    """``sum_i w_i * D(student_i, teacher_i)`` for one chunk of ``[n, d]`` hidden states."""
    with torch.no_grad():
        t_logits = head_logits(teacher_head, teacher_hidden, vocab_size)  # [n, V]
    s_logits = head_logits(student_head, hidden, vocab_size)  # [n, V]
    return (weights * divergence(s_logits, t_logits)).sum()


def selected_loss_sum(
    hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    weights: torch.Tensor,
    student_head: nn.Module,
    teacher_head: nn.Module,
    divergence: Divergence,
    vocab_size: int,
    chunk_size: int = 512,
) -> torch.Tensor:
    """Weighted divergence summed over kept positions (a scalar with grad through ``hidden``).

    ``hidden`` ``[K, d]`` student hidden states at kept positions (with grad), ``teacher_hidden``
    ``[K, d_t]``, ``weights`` ``[K]`` (1 for a plain mask, importance weights otherwise).
    """
    total = hidden.sum() * 0.0  # keeps every rank's graph connected when K == 0
    for h, t, w in zip(hidden.split(chunk_size), teacher_hidden.split(chunk_size), weights.split(chunk_size)):
        args = (h, t, w, student_head, teacher_head, divergence, vocab_size)
        if torch.is_grad_enabled() and h.requires_grad:
            total = total + checkpoint(_chunk_loss, *args, use_reentrant=False)
        else:
            total = total + _chunk_loss(*args)
    return total
