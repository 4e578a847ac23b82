"""The two passes a training step and a notebook share: sample rollouts from the student, and score them
with both models (hidden states at completion positions, then chunked no-grad token statistics).

``DistillModule`` and ``diagnostics.Scorer`` both call these, so what a notebook shows is what training
computes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tiplight.chunked_stats import (
    RawStats,
    RngState,
    TokenLoss,
    completion_hidden,
    rng_state,
    token_stats_and_loss,
)
from tiplight.objectives import Objective, TokenContext
from tiplight.parallel import frozen_forward
from tiplight.rollout import Rollout, RolloutEngine, Sampling, eos_token_ids
from tiplight.teachers import ServedTeacher


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the duration; restores each model's training flag."""
    flags = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, flag in zip(models, flags):
            m.train(flag)


def sample(engine: RolloutEngine, student: nn.Module, tokenizer: Any, batch: dict[str, Any], *,
           sampling: Sampling, seed: int, vocab_size: int, batch_size: int, synced: bool = False) -> Rollout:
    """Completions of ``batch`` (``input_ids`` / ``attention_mask`` ``[R, P]``, ``keys`` ``[R]``) from the
    student in eval mode, ``batch_size`` rows at a time, on the student's device."""
    device = next(student.parameters()).device
    eos, pad = eos_token_ids(tokenizer, student), tokenizer.pad_token_id
    parts = []
    with eval_mode(student):
        for rows in torch.arange(len(batch["keys"])).split(batch_size):
            parts.append(engine.generate(
                student, batch["input_ids"][rows].to(device), batch["attention_mask"][rows].to(device),
                sampling=sampling, seed=seed, keys=batch["keys"][rows], eos_token_ids=eos, pad_token_id=pad,
                vocab_size=vocab_size, synced=synced,
            ))  # fmt: skip
    return Rollout.cat(parts, pad)


@dataclass
class ScoredPart:
    """One micro-batch after scoring: its rollout, teacher hidden states, raw stats (and student graph)."""

    rollout: Rollout
    teacher_hidden: torch.Tensor  # [r, C, d_t]
    raw: RawStats  # [r, C]
    student_hidden: torch.Tensor | None = None  # [r, C, d] with grad, when scoring and update share a pass
    token_loss: TokenLoss | None = None  # [r, C] loss (and [r, C, d] gradient) from the statistics pass
    rng: RngState | None = None  # before the student forward: a recompute replays its dropout masks
    context: TokenContext | None = None  # [r, C] what an objective may read besides the distributions


Teacher = nn.Module | ServedTeacher  # a local model, or one behind an inference server


def teacher_hidden(teacher: nn.Module, mb: Rollout) -> torch.Tensor:
    """Teacher hidden states at completion positions ``[r, C, d_t]`` (inference mode, then a plain copy
    that autograd may save)."""
    with frozen_forward(teacher):
        hidden = completion_hidden(teacher, mb.input_ids, mb.attention_mask, mb.prompt_length)
    return hidden.clone()


def score(student: nn.Module, teacher: Teacher, rollout: Rollout, *, micro_batch_size: int, vocab_size: int,
          chunk_size: int, keep_graph: bool = False, objective: Objective | None = None) -> list[ScoredPart]:
    """Teacher (local, or served: ``teachers.ServedTeacher``) and student forward per micro-batch, then entropy / KL(S||T) / KL(T||S) at valid positions.

    ``keep_graph``: keep the student's hidden states with grad, so the update reuses this forward.
    ``objective``: with a closed form, also each token's loss from the same logits, and where grad is
    enabled, its gradient w.r.t. the hidden state (``stats.token_stats_and_loss``). A rollout that carries
    sampler log-probabilities also gets the student's (``RawStats.logprob``)."""
    device = next(student.parameters()).device
    parts = []
    micro_batches = [mb.to(device) for mb in rollout.split(micro_batch_size)]
    served = isinstance(teacher, ServedTeacher)
    # a served teacher gets every micro-batch's requests now and answers them during the student's forwards
    pending = [teacher.submit(mb) for mb in micro_batches] if served else None
    for i, mb in enumerate(micro_batches):
        t_hidden = None if served else teacher_hidden(teacher, mb)
        rng = rng_state(device)
        with torch.set_grad_enabled(keep_graph):
            s_hidden = completion_hidden(student, mb.input_ids, mb.attention_mask, mb.prompt_length)
        if served:
            t_hidden = pending[i].result()  # [r, C, D]
        raw, token_loss = token_stats_and_loss(
            s_hidden, student.get_output_embeddings(), t_hidden, teacher.get_output_embeddings(),
            mb.completion_mask, vocab_size, chunk_size, objective, grad=torch.is_grad_enabled(),
            tokens=None if mb.sampler_logprobs is None else mb.completion_ids)
        parts.append(ScoredPart(mb, t_hidden, raw, s_hidden if keep_graph else None, token_loss, rng,
                                token_context(mb, raw)))
    return parts


def token_context(rollout: Rollout, raw: RawStats) -> TokenContext:
    """The sampled tokens ``[r, C]`` and, when the rollout carries the sampler's log-probabilities, those
    and each rollout's mean ``log P_S - log P_sampler`` over its valid tokens (broadcast to ``[r, C]``)."""
    tokens, sampler = rollout.completion_ids, rollout.sampler_logprobs
    if sampler is None:
        return TokenContext(tokens)
    valid = rollout.completion_mask
    mean = ((raw.logprob - sampler) * valid).sum(1) / valid.sum(1).clamp(min=1)  # [r]
    return TokenContext(tokens, sampler, mean[:, None].expand_as(sampler))


def sampler_logprob_gap(parts: list[ScoredPart]) -> torch.Tensor | None:
    """Sum of ``|log P_S - log P_sampler|`` over valid tokens, and their count (``[2]``); None when the
    rollout carries no sampler log-probabilities. A trainer that drifts from its sampler shows here."""
    if parts[0].rollout.sampler_logprobs is None:
        return None
    total = sum(((p.raw.logprob - p.rollout.sampler_logprobs).abs() * p.rollout.completion_mask).sum() for p in parts)
    count = sum(p.rollout.completion_mask.sum() for p in parts)
    return torch.stack([total, count.float()])
