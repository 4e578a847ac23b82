"""Padding, the one place for it: lists of token ids to a batch tensor, and tensors to a width."""

from __future__ import annotations

import torch


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[R, P]`` ids and attention mask, left-padded to the longest sequence (prompts for generation)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
    return ids, mask


def right_pad(sequences: list[list[int]], value: int) -> torch.Tensor:
    """``[R, T]`` long tensor of ``sequences`` right-padded with ``value`` to the longest one."""
    width = max(len(s) for s in sequences)
    return torch.tensor([list(s) + [value] * (width - len(s)) for s in sequences], dtype=torch.long)


def pad_right(x: torch.Tensor, width: int, value: int | float = 0) -> torch.Tensor:
    """Right-pad the last dimension of ``[R, C]`` to ``width``."""
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)
