"""Scores of k episodes per problem and the paper's aggregates over them: Avg@k and Best@k (TIP Table 7
reports Avg@16 of DeepPlanning's hard-constraint score)."""

from __future__ import annotations

from typing import Any

import torch

from tiplight.envs.base import Environment
from tiplight.envs.loop import TurnGenerate, run_episodes


def scores_at_k(generate: TurnGenerate, tokenizer: Any, env: Environment, problems: list[dict[str, Any]], k: int, *,
                max_new_tokens: int, eos_token_ids: list[int], first_key: int = 0, batch_size: int = 64,
                template_kwargs: dict[str, Any] | None = None) -> torch.Tensor:
    """``[n, k]`` scores of k episodes of each of the n problems; episode j of problem i has the rollout key
    ``first_key + i * k + j``, so the result does not depend on ``batch_size`` (rows per loop call)."""
    if k < 1:
        raise ValueError(f"k={k!r} is invalid; score at least one episode per problem.")
    repeated = [p for p in problems for _ in range(k)]
    keys = first_key + torch.arange(len(repeated))
    scores = [run_episodes(generate, tokenizer, env, repeated[i : i + batch_size], keys[i : i + batch_size],
                           max_new_tokens=max_new_tokens, eos_token_ids=eos_token_ids,
                           template_kwargs=template_kwargs).scores(env)
              for i in range(0, len(repeated), batch_size)]
    return torch.cat(scores).view(len(problems), k)


def avg_at_k(scores: torch.Tensor) -> float:
    """Avg@k of ``scores`` ``[tasks, k]``: the mean over tasks of the mean over a task's k samples."""
    return float(scores.float().mean())


def best_at_k(scores: torch.Tensor) -> float:
    """Best@k of ``scores`` ``[tasks, k]``: the mean over tasks of a task's best sample."""
    return float(scores.float().max(dim=1).values.mean())
