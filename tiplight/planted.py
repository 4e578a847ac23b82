"""Planted errors: where a world knows its student is wrong, and how much of that a selector keeps.

A world with planted errors (the overconfident toy world, ``tiplight.toy.planted``) provides a
*planted-error mask*: a function ``(prompt, completion tokens as text) -> one bool per token`` that is
True where the student was taught a wrong rule. ``model.logging.planted_errors`` names it by dotted path; the
module then logs ``planted/*`` each step (``selection.planted_recall``) and ``tiplight analyze
--planted`` reports the same on saved rollouts. Without it nothing here runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from tiplight.rollout import Rollout

PlantedMask = Callable[[str, list[str]], list[bool]]


def load_planted_mask(path: str, option: str = "model.logging.planted_errors") -> PlantedMask:
    """The function at dotted ``path`` (``tiplight.toy.planted.planted_error_mask``); one sentence if not."""
    module, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError):
        found = None
    if not callable(found):
        raise ValueError(f"{option}={path!r} is not an importable function; give the dotted path of a "
                         "function (prompt, tokens) -> list[bool], e.g. tiplight.toy.planted.planted_error_mask.")
    return found


def decode_tokens(tokenizer: Any, token_ids: torch.Tensor, valid: torch.Tensor) -> list[list[str]]:
    """Text of each token ``[R, C]`` on its own ("" where not valid); special tokens are kept."""
    cache: dict[int, str] = {}
    out = []
    for ids, ok in zip(token_ids.tolist(), valid.tolist()):
        out.append([cache.setdefault(i, tokenizer.decode([i])) if v else "" for i, v in zip(ids, ok)])
    return out


def prompt_texts(tokenizer: Any, rollout: Rollout, rows: slice = slice(None)) -> list[str]:
    """The prompt text of each rollout row (left padding dropped)."""
    ids = rollout.input_ids[rows, : rollout.prompt_length].cpu()
    mask = rollout.attention_mask[rows, : rollout.prompt_length].bool().cpu()
    return [tokenizer.decode(p[m].tolist()) for p, m in zip(ids, mask)]


def planted_positions(mark: PlantedMask, prompts: list[str], tokens: list[list[str]],
                      valid: torch.Tensor) -> torch.Tensor:
    """``mark`` applied to each rollout: bool ``[R, C]``, False where not ``valid`` ``[R, C]``.

    A row's tokens are cut at its last valid position, so ``mark`` never sees the padding."""
    out = torch.zeros(valid.shape, dtype=torch.bool)
    for r, (prompt, row, ok) in enumerate(zip(prompts, tokens, valid.tolist())):
        n = max((i + 1 for i, v in enumerate(ok) if v), default=0)
        marks = mark(prompt, row[:n])
        if len(marks) != n:
            raise ValueError(f"the planted-error mask returned {len(marks)} values for {n} tokens; it must "
                             "return one bool per token.")
        out[r, :n] = torch.tensor(marks, dtype=torch.bool)
    return out.to(valid.device) & valid.bool()


def rollout_planted(mark: PlantedMask, tokenizer: Any, rollout: Rollout) -> torch.Tensor:
    """The planted-error positions of a training rollout: bool ``[R, C]`` over its completion tokens."""
    valid = rollout.completion_mask
    return planted_positions(mark, prompt_texts(tokenizer, rollout),
                             decode_tokens(tokenizer, rollout.completion_ids.cpu(), valid.cpu()), valid)
