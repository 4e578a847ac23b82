"""The differentiable part of a step: the objective's loss at kept positions only.

``selected_loss_sum`` returns a scalar whose backward reaches the student through the kept tokens'
final hidden states ``[K, d]`` (and the lm_head's parameters); ``[K, V]`` logits never exist with grad.
It takes the cheapest of three paths:

1. precomputed (``token_loss`` with gradients, from ``stats.token_stats_and_loss``: an objective with a
   closed form, frozen student head): no pass over the vocabulary at all; backward injects the kept rows
   of the statistics pass's ``d loss / d hidden``, times the weights.
2. closed form (``Objective.closed_form`` given the kept rows' ``TokenContext``, plain ``nn.Linear``
   student head that trains, or no precomputed gradient): one pass over the kept tokens, ``chunk_size``
   at a time, without autograd: both heads' logits once, the closed-form gradient w.r.t. the logits, then
   ``d loss / d hidden`` and the head's weight gradient by two matmuls; backward injects them.
3. autograd (an objective without a closed form, or a head that is no plain ``nn.Linear``: LoRA-wrapped,
   FSDP-sharded): ``Objective.loss`` with the student head with grad per chunk, recomputed in backward
   (activation checkpointing), so one chunk's logits are the peak.

Paths 1 and 2 hand their gradients to autograd through ``_Precomputed``, so a step's decoder, head and
tied embeddings are reached by one backward call (as DDP's gradient hooks expect).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tiplight.chunked_stats import TokenLoss
from tiplight.heads import LinearHead, Workspace, chunk_logits, head_logits
from tiplight.losses import divergences_and_grad
from tiplight.objectives import Objective, TokenContext


class _Precomputed(torch.autograd.Function):
    """A scalar whose gradients with respect to ``inputs`` were computed beforehand (``grads``, same
    order and shapes); backward scales them by the incoming gradient, in place (backward runs once)."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, grads: tuple[torch.Tensor, ...], *inputs: torch.Tensor):
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx, out: torch.Tensor):
        grads, ctx.grads = ctx.grads, None
        return None, None, *(g.mul_(out.to(g.dtype)) for g in grads)


def _autograd_loss_sum(hidden, teacher_hidden, weights, student_head, teacher_head, objective: Objective,
                       vocab_size, chunk_size, context: TokenContext | None) -> torch.Tensor:
    """Path 3: autograd per chunk, each chunk recomputed in backward."""

    def chunk_loss(h: torch.Tensor, t: torch.Tensor, w: torch.Tensor, rows: slice) -> torch.Tensor:
        """``sum_i w_i * loss(student_i, teacher_i)`` for one chunk of ``[n, d]`` hidden states."""
        with torch.no_grad():
            t_logits = head_logits(teacher_head, t, vocab_size)  # [n, V]
        s_logits = head_logits(student_head, h, vocab_size)  # [n, V]
        return (w * objective.loss(s_logits, t_logits, None if context is None else context.at(rows))).sum()

    total = hidden.sum() * 0.0  # keeps every rank's graph connected when K == 0
    for start in range(0, len(hidden), chunk_size):
        rows = slice(start, start + chunk_size)
        h, t, w = hidden[rows], teacher_hidden[rows], weights[rows]
        if torch.is_grad_enabled() and h.requires_grad:
            total = total + checkpoint(chunk_loss, h, t, w, rows, use_reentrant=False)
        else:
            total = total + chunk_loss(h, t, w, rows)
    return total


@torch.no_grad()
def _closed_form_grads(
    hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    weights: torch.Tensor,
    head: LinearHead,
    teacher_head: nn.Module,
    objective: Objective,
    context: TokenContext | None,
    vocab_size: int,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[nn.Parameter, torch.Tensor]]]:
    """Path 2: ``sum_i w_i D_i``, its gradient for ``hidden`` ``[K, d]``, and (parameter, gradient) for
    each head parameter that trains (rows past ``vocab_size`` get 0)."""
    value = torch.zeros((), device=hidden.device)
    grad_hidden = torch.empty_like(hidden)  # [K, d]
    params = [(p, torch.zeros_like(p)) for p in (head.module.weight, head.module.bias)
              if p is not None and p.requires_grad]
    t_linear, workspace = LinearHead.of(teacher_head, vocab_size), Workspace(hidden.device)
    for start in range(0, len(hidden), chunk_size):
        rows = slice(start, start + chunk_size)
        h, w = hidden[rows], weights[rows]  # [n, d], [n]
        s_logits = chunk_logits(head.module, head, h, vocab_size, workspace, "student")  # [n, V]
        t_logits = chunk_logits(teacher_head, t_linear, teacher_hidden[rows], vocab_size, workspace, "teacher")
        form = objective.closed_form(None if context is None else context.at(rows))
        *_, loss, g = divergences_and_grad(s_logits, t_logits, form, consume=True, workspace=workspace)
        value += (w * loss).sum()
        g = g.mul_(w[:, None]).to(head.weight.dtype)  # d (sum w D) / d logits, in the matmul dtype
        grad_hidden[rows] = head.grad_input(g)
        for param, grad in params:
            if param.dim() == 1:  # bias
                grad[:vocab_size] += g.sum(0)
            elif grad.dtype == g.dtype:
                grad[:vocab_size].addmm_(g.T, h.to(g.dtype))  # [V, d], no temporary
            else:
                grad[:vocab_size] += g.T @ h.to(g.dtype)
    return value, grad_hidden, params


def selected_loss_sum(
    hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    weights: torch.Tensor,
    student_head: nn.Module,
    teacher_head: nn.Module,
    objective: Objective,
    vocab_size: int,
    chunk_size: int = 512,
    token_loss: TokenLoss | None = None,
    context: TokenContext | None = None,
) -> torch.Tensor:
    """Weighted loss summed over kept positions (a scalar with grad through ``hidden`` and the head).

    ``hidden`` ``[K, d]`` student hidden states at kept positions (with grad), ``teacher_hidden``
    ``[K, d_t]``, ``weights`` ``[K]`` (1 for a plain mask, importance weights otherwise), ``token_loss``
    the kept rows of the statistics pass's ``TokenLoss`` (``TokenLoss.at(mask)``), if any, ``context``
    the kept rows of the rollout's ``TokenContext`` (for objectives that read the sampled tokens).
    """
    trains = any(p.requires_grad for p in student_head.parameters())
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or trains)
    if token_loss is not None and not needs_grad:
        return (weights * token_loss.loss).sum()
    if token_loss is not None and token_loss.grad_hidden is not None and not trains:  # path 1
        value = (weights * token_loss.loss).sum()
        grad = (token_loss.grad_hidden * weights[:, None].to(token_loss.grad_hidden.dtype)).to(hidden.dtype)
        return _Precomputed.apply(value, (grad,), hidden)
    form = objective.closed_form(context)
    head = LinearHead.of(student_head, vocab_size) if needs_grad and form is not None else None
    if head is not None:  # path 2
        value, grad_hidden, params = _closed_form_grads(hidden.detach(), teacher_hidden, weights, head,
                                                        teacher_head, objective, context, vocab_size, chunk_size)
        if hidden.requires_grad:
            params.append((hidden, grad_hidden))
        return _Precomputed.apply(value, tuple(g for _, g in params), *(x for x, _ in params))
    return _autograd_loss_sum(hidden, teacher_hidden, weights, student_head, teacher_head, objective,
                              vocab_size, chunk_size, context)
