"""Per-token statistics of a rollout, computed in chunks without grad from final hidden states.

The lm_heads are applied chunk by chunk, so ``[N, V]`` logits exist for at most ``chunk_size`` positions
at a time, and never with grad. The results are ``[R, C]`` tensors (0 at invalid positions) that
``TokenStats.from_raw`` normalises over the stats scope. The same pass can also give each token's loss
and, for a frozen student head, its gradient with respect to the final hidden state (``TokenLoss``), so
that the update needs no second pass over the vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from tiplight import losses
from tiplight.heads import LinearHead, Workspace, chunk_logits
from tiplight.objectives import Objective
from tiplight.padding import pad_right


@dataclass(frozen=True)
class RawStats:
    """``[R, C]`` student entropy / log|V|, KL(S||T), KL(T||S); zeros where not valid. ``logprob``: the
    student's log-probability of each sampled token, when the statistics pass was given the tokens."""

    entropy: torch.Tensor
    rkl: torch.Tensor
    fkl: torch.Tensor
    logprob: torch.Tensor | None = None

    @staticmethod
    def cat(parts: list[RawStats]) -> RawStats:
        """Concatenate along rollouts; completion lengths are right-padded with zeros."""
        width = max(p.entropy.shape[1] for p in parts)
        cat = lambda f: torch.cat([pad_right(getattr(p, f), width) for p in parts])  # noqa: E731
        logprob = cat("logprob") if all(p.logprob is not None for p in parts) else None
        return RawStats(cat("entropy"), cat("rkl"), cat("fkl"), logprob)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as ``generate`` uses them: ``[R, L]``."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def completion_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int):
    """Final hidden states at the positions that predict the completion: ``[R, C, d]``.

    Runs the decoder only (no lm_head), on ``input_ids[:, :-1]``: the last token predicts nothing.
    """
    ids, mask = input_ids[:, :-1], attention_mask[:, :-1]  # [R, P + C - 1]
    # no KV cache: nothing is decoded after this pass, and a cache breaks activation-checkpoint recompute
    out = model.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)
    return out.last_hidden_state[:, prompt_length - 1 :]  # [R, C, d]


RngState = tuple[torch.Tensor, torch.Tensor | None]  # CPU, and the CUDA device's


def rng_state(device: torch.device) -> RngState:
    """The RNG state before a forward, to draw the same dropout masks again with ``replay_rng``."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


@contextmanager
def replay_rng(state: RngState | None, device: torch.device) -> Iterator[None]:
    """Run the block from ``state`` (a recomputed forward then equals the scored one, dropout included, so
    the statistics pass's gradient belongs to it); the RNG is as before the block afterwards. None: no
    replay."""
    if state is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


@dataclass(frozen=True)
class TokenLoss:
    """Each token's divergence ``[R, C]`` (nats) and, when the student's head is frozen, its gradient with
    respect to the student's final hidden state ``[R, C, d]``; zeros where not valid. ``at(mask)`` gives
    the rows of the kept tokens (``[K]``, ``[K, d]``) in ``hidden[mask]`` order."""

    loss: torch.Tensor
    grad_hidden: torch.Tensor | None = None

    def at(self, mask: torch.Tensor) -> TokenLoss:
        return TokenLoss(self.loss[mask], None if self.grad_hidden is None else self.grad_hidden[mask])


@torch.no_grad()
def token_stats_and_loss(student_hidden: torch.Tensor, student_head: nn.Module, teacher_hidden: torch.Tensor,
                         teacher_head: nn.Module, valid: torch.Tensor, vocab_size: int, chunk_size: int = 512,
                         objective: Objective | None = None, grad: bool = False,
                         tokens: torch.Tensor | None = None) -> tuple[RawStats, TokenLoss | None]:
    """Entropy, reverse and forward KL at every valid position, ``chunk_size`` positions at a time, and,
    given an ``objective`` with a closed form, each valid token's loss from the same logits (else None:
    the update computes it, with the context it may read).

    ``student_hidden`` ``[R, C, d]``, ``teacher_hidden`` ``[R, C, d_t]``, ``valid`` ``[R, C]`` bool,
    ``tokens`` ``[R, C]`` the sampled tokens (then ``RawStats.logprob`` holds the student's log-probability
    of each). Entropy is divided by ``log(vocab_size)`` (TIP Eq. 2); KLs are in nats over the full
    vocabulary. With ``grad`` and a frozen plain ``nn.Linear`` student head, also ``d loss / d hidden``
    per token: the closed-form gradient w.r.t. the logits times the head.
    """
    s_flat, t_flat = student_hidden.detach().flatten(0, 1), teacher_hidden.flatten(0, 1)  # [R * C, d], [R * C, d_t]
    form = None if objective is None else objective.closed_form()
    frozen = not any(p.requires_grad for p in student_head.parameters())
    s_linear, t_linear = LinearHead.of(student_head, vocab_size), LinearHead.of(teacher_head, vocab_size)
    grad_head = s_linear if grad and form is not None and frozen else None
    workspace = Workspace(s_flat.device)
    out = torch.zeros(5, valid.numel(), device=valid.device)  # entropy, rkl, fkl, loss, logprob
    grad_hidden = torch.zeros_like(s_flat) if grad_head is not None else None
    for chunk in valid.flatten().nonzero().squeeze(1).split(chunk_size):
        s_logits = chunk_logits(student_head, s_linear, s_flat[chunk], vocab_size, workspace, "student")  # [n, V]
        t_logits = chunk_logits(teacher_head, t_linear, t_flat[chunk], vocab_size, workspace, "teacher")
        if tokens is not None:  # before the statistics overwrite the logits
            out[4, chunk] = losses.sampled_logprob(s_logits, tokens.flatten()[chunk])
        h, rkl, fkl, loss, g = losses.divergences_and_grad(s_logits, t_logits, form, consume=True,
                                                           workspace=workspace)
        out[:3, chunk] = torch.stack((h, rkl, fkl))
        if loss is not None:
            out[3, chunk] = loss
        if grad_hidden is not None:
            grad_hidden[chunk] = grad_head.grad_input(g).to(grad_hidden.dtype)  # [n, d]
    grad_hidden = None if grad_hidden is None else grad_hidden.view_as(student_hidden)
    return _unpack(out, valid.shape, vocab_size, tokens is not None, form is not None, grad_hidden)


def _unpack(out: torch.Tensor, shape: torch.Size, vocab_size: int, logprobs: bool, loss: bool,
            grad_hidden: torch.Tensor | None) -> tuple[RawStats, TokenLoss | None]:
    """``RawStats`` (entropy normalised by log|V|) and, with ``loss``, ``TokenLoss`` from the pass's
    ``[5, R * C]`` rows: entropy, rkl, fkl, loss, logprob."""
    out[0] /= math.log(vocab_size)
    entropy, rkl, fkl, token_loss, logprob = out.view(5, *shape)
    raw = RawStats(entropy, rkl, fkl, logprob if logprobs else None)
    return raw, (TokenLoss(token_loss, grad_hidden) if loss else None)
