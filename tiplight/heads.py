"""lm_heads applied without autograd: a plain ``nn.Linear`` head's weight for logits and closed-form
gradients, and ``[n, V]`` scratch tensors reused across the chunks of one pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def head_logits(head: nn.Module, hidden: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``head(hidden)`` sliced to the tokenizer's vocabulary: ``[N, d] -> [N, V]``."""
    return head(hidden)[..., :vocab_size]


@dataclass(frozen=True)
class LinearHead:
    """A plain ``nn.Linear`` lm_head as weight ``[V, d]`` (and bias ``[V]``) sliced to the vocabulary, in
    the dtype its matmuls run in (autocast's when enabled: one cast per pass, not one per chunk)."""

    module: nn.Linear
    weight: torch.Tensor
    bias: torch.Tensor | None

    @staticmethod
    def of(head: nn.Module, vocab_size: int) -> LinearHead | None:
        """None for any other head (LoRA-wrapped, FSDP units, DTensor weights): autograd serves those."""
        if type(head) is not nn.Linear or type(head.weight) is not nn.Parameter:
            return None
        device = head.weight.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else head.weight.dtype
        bias = None if head.bias is None else head.bias.detach()[:vocab_size].to(dtype)
        return LinearHead(head, head.weight.detach()[:vocab_size].to(dtype), bias)

    def logits(self, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``[n, d] -> [n, V]``, contiguous; written into ``out`` (``[n, V]``, the weight's dtype) if given."""
        hidden = hidden.to(self.weight.dtype)
        if out is None:
            return nn.functional.linear(hidden, self.weight, self.bias)
        torch.mm(hidden, self.weight.T, out=out)
        return out if self.bias is None else out.add_(self.bias)

    def grad_input(self, grad_logits: torch.Tensor) -> torch.Tensor:
        """``d loss / d hidden`` from ``d loss / d logits``: ``[n, V] -> [n, d]``."""
        return grad_logits.to(self.weight.dtype) @ self.weight


class Workspace:
    """Named ``[n, V]`` scratch tensors reused by every chunk of one pass, on CPU without autocast only:
    there every fresh large tensor costs page faults (as much as the arithmetic on it); a GPU's caching
    allocator reuses memory by itself. ``take`` returns None where nothing is reused."""

    def __init__(self, device: torch.device) -> None:
        self.reuse = device.type == "cpu" and not torch.is_autocast_enabled("cpu")
        self.buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, rows: int, cols: int, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        if not self.reuse:
            return None
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < rows * cols or buffer.dtype != dtype:
            buffer = self.buffers[name] = torch.empty(rows * cols, dtype=dtype)
        return buffer[: rows * cols].view(rows, cols)


def chunk_logits(head: nn.Module, linear: LinearHead | None, hidden: torch.Tensor, vocab_size: int,
                 workspace: Workspace, name: str) -> torch.Tensor:
    """``head(hidden)`` sliced to the vocabulary ``[n, V]``, into ``workspace``'s ``name`` tensor when
    ``linear`` (``LinearHead.of(head)``) is given and the workspace reuses memory."""
    if linear is None:
        return head_logits(head, hidden, vocab_size)
    return linear.logits(hidden, workspace.take(name, len(hidden), vocab_size, linear.weight.dtype))
