"""The heads a served teacher keeps on the student's side: its own ``lm_head`` read from the checkpoint (the
exact path), or a head that rebuilds ``[n, V]`` log-probabilities from shipped top-k values (the top-k path)."""

from __future__ import annotations

import json

import torch
from torch import nn

TINY = torch.finfo(torch.float32).tiny


class TopKHead(nn.Module):
    """Packed rows ``[n, 1 + 2m]`` -> teacher log-probabilities ``[n, V]``.

    A row is ``[fill, logp_1 .. logp_m, id_1 .. id_m]``: ``m`` shipped log-probabilities at token ids (a row
    with fewer repeats its first pair), and ``fill`` the log-probability of every other token: the mass the
    shipped ones leave (computed in float64), spread evenly. The result is normalised, so a ``log_softmax`` of it is itself. Ids
    are stored as float32, exact below 2^24 (vocabularies are ~10^5)."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size

    @staticmethod
    def width(m: int) -> int:
        return 1 + 2 * m

    @staticmethod
    def pack(rows: list[dict[int, float]], m: int, vocab_size: int) -> torch.Tensor:
        """Packed rows ``[n, 1 + 2m]`` from ``n`` dicts of at most ``m`` (token id -> log-probability) pairs,
        ids < ``vocab_size`` (at least one pair each)."""
        if not rows:
            return torch.empty(0, TopKHead.width(m))
        counts = torch.tensor([len(r) for r in rows])  # [n]
        ids = torch.tensor([[*r, *[next(iter(r))] * (m - len(r))] for r in rows])  # [n, m]
        logp = torch.tensor([[*r.values(), *[next(iter(r.values()))] * (m - len(r))] for r in rows],
                            dtype=torch.float64)  # [n, m]
        shipped = torch.arange(m) < counts[:, None]  # the padding repeats the first pair: counted once
        mass = (logp.exp() * shipped).sum(-1)  # [n]
        rest = (vocab_size - counts).clamp(min=1)
        fill = ((1 - mass).clamp(min=TINY) / rest).log()  # [n]
        return torch.cat([fill[:, None], logp, ids.double()], -1).float()

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        m = (packed.shape[-1] - 1) // 2
        fill, logp, ids = packed[..., :1], packed[..., 1 : 1 + m], packed[..., 1 + m :].long()
        out = fill.expand(*packed.shape[:-1], self.vocab_size).contiguous()  # [n, V]
        return out.scatter_(-1, ids, logp)


def load_lm_head(source: str, vocab_size: int, dtype: str = "float32") -> nn.Linear:
    """The ``lm_head`` of checkpoint ``source`` (hub id or directory; the tied input embedding when it has no
    head) as a frozen ``nn.Linear`` ``d -> vocab_size``, without loading the rest of the model."""
    from safetensors import safe_open

    from tiplight.sources import resolve

    weight = None
    for name in ("lm_head.weight", "model.embed_tokens.weight"):
        file = _shard_of(resolve(source), name)
        if file is not None:
            with safe_open(file, "pt") as tensors:
                weight = tensors.get_tensor(name)
            break
    if weight is None:
        raise ValueError(f"model.teacher.head={source!r} holds no lm_head.weight (nor a tied embedding) in "
                         "safetensors files; give the teacher checkpoint the server runs.")
    if weight.shape[0] < vocab_size:
        raise ValueError(f"model.teacher.head={source!r} has {weight.shape[0]} output rows but the tokenizer has "
                         f"{vocab_size} tokens; the teacher and tokenizer do not belong together.")
    head = nn.Linear(weight.shape[1], vocab_size, bias=False, dtype=getattr(torch, dtype))
    head.weight = nn.Parameter(weight[:vocab_size].to(head.weight.dtype).contiguous(), requires_grad=False)
    return head


def _shard_of(source: str, name: str) -> str | None:
    """The safetensors file of ``source`` that holds tensor ``name``, or None."""
    from transformers.utils import cached_file

    index = cached_file(source, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False)
    if index is not None:
        with open(index) as f:
            shard = json.load(f)["weight_map"].get(name)
        return None if shard is None else cached_file(source, shard)
    single = cached_file(source, "model.safetensors", _raise_exceptions_for_missing_entries=False)
    if single is None:
        return None
    from safetensors import safe_open

    with safe_open(single, "pt") as tensors:
        return single if name in tensors.keys() else None  # noqa: SIM118 (safe_open is no dict)
