"""Per-token statistics of a rollout, computed in chunks without grad from final hidden states.

The lm_heads are applied chunk by chunk, so ``[N, V]`` logits exist for at most ``chunk_size`` positions
at a time, and never with grad. The results are ``[R, C]`` tensors (0 at invalid positions) that
``TokenStats.from_raw`` normalises over the stats scope.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from tiplight import losses
from tiplight.selection import TokenStats, quadrant_shares, quadrants


@dataclass(frozen=True)
class RawStats:
    """``[R, C]`` student entropy / log|V|, KL(S||T), KL(T||S); zeros where not valid."""

    entropy: torch.Tensor
    rkl: torch.Tensor
    fkl: torch.Tensor

    @staticmethod
    def cat(parts: list[RawStats]) -> RawStats:
        """Concatenate along rollouts; completion lengths are right-padded with zeros."""
        width = max(p.entropy.shape[1] for p in parts)
        pad = lambda x: nn.functional.pad(x, (0, width - x.shape[1]))  # noqa: E731
        return RawStats(*(torch.cat([pad(getattr(p, f)) for p in parts]) for f in ("entropy", "rkl", "fkl")))


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


def head_logits(head: nn.Module, hidden: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``head(hidden)`` sliced to the tokenizer's vocabulary: ``[N, d] -> [N, V]``."""
    return head(hidden)[..., :vocab_size]


@torch.no_grad()
def token_stats(
    student_hidden: torch.Tensor,
    student_head: nn.Module,
    teacher_hidden: torch.Tensor,
    teacher_head: nn.Module,
    valid: torch.Tensor,
    vocab_size: int,
    chunk_size: int = 512,
) -> RawStats:
    """Entropy, reverse and forward KL at every valid position, ``chunk_size`` positions at a time.

    ``student_hidden`` ``[R, C, d]``, ``teacher_hidden`` ``[R, C, d_t]``, ``valid`` ``[R, C]`` bool.
    Entropy is divided by ``log(vocab_size)`` (TIP Eq. 2); KLs are in nats over the full vocabulary.
    """
    index = valid.flatten().nonzero().squeeze(1)  # [N]
    s_flat = student_hidden.detach().flatten(0, 1)
    t_flat = teacher_hidden.flatten(0, 1)
    out = torch.zeros(3, valid.numel(), device=valid.device)  # entropy, rkl, fkl
    for chunk in index.split(chunk_size):
        s_logits = head_logits(student_head, s_flat[chunk], vocab_size)  # [n, V]
        t_logits = head_logits(teacher_head, t_flat[chunk], vocab_size)  # [n, V]
        out[:, chunk] = torch.stack(losses.token_divergences(s_logits, t_logits))
    out[0] /= math.log(vocab_size)
    return RawStats(*out.view(3, *valid.shape))


def step_metrics(stats: TokenStats, keep: torch.Tensor | None, entropy_threshold: float | None = None,
                 divergence_threshold: float | None = None) -> dict[str, torch.Tensor | float]:
    """A step's token metrics: mean entropy and KL(S||T) over valid tokens, mean completion length, and
    TIP quadrant shares over all valid tokens (and over kept ones when ``keep`` ``[R, C]`` is given)."""
    valid = stats.valid
    n_valid = valid.sum().clamp(min=1)
    metrics: dict[str, torch.Tensor | float] = {
        "train/entropy": (stats.entropy * valid).sum() / n_valid,
        "train/rkl": (stats.rkl * valid).sum() / n_valid,
        "train/completion_length": valid.sum(1).float().mean(),
    }
    ids = quadrants(stats, entropy_threshold, divergence_threshold)
    for over, mask in (("all", valid), ("kept", keep)):
        if mask is not None:
            metrics.update({f"quadrant/{q}_{over}": share for q, share in quadrant_shares(ids, mask).items()})
    return metrics
