"""Teachers served by vLLM's OpenAI-compatible server (``vllm serve``): top-k prompt log-probabilities,
or the exact final hidden states from its pooling runner.

``VLLMTopK`` asks ``/v1/completions`` with the rollout's token ids as the prompt and ``prompt_logprobs=k``:
at every position vLLM returns its ``k`` most likely tokens and the token that is there (the one the student
sampled), from the raw logits (no temperature). ``VLLMHidden`` asks ``/pooling`` of a server started with
``--runner pooling --convert embed`` and token pooling ``ALL`` without activation: the final (normed) hidden
state at every position, shipped as base64 float32; the teacher's ``lm_head`` is read from its checkpoint
and held here, so every statistic and loss is the colocated teacher's. Start-up commands: README, "Teacher
placement".
"""

from __future__ import annotations

import base64
import math
import sys
from typing import Any, Literal

import torch
from torch import nn

from tiplight.teachers.base import ServedTeacher, Span, register_teacher
from tiplight.teachers.heads import TopKHead, load_lm_head
from tiplight.teachers.transport import TeacherServerError, malformed

WIRE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
if sys.byteorder != "little":  # torch.frombuffer reads the machine's order; vLLM is asked for little-endian
    raise ImportError("tiplight.teachers.vllm reads little-endian payloads; this machine is big-endian.")


@register_teacher
class VLLMTopK(ServedTeacher):
    """The teacher's top-k log-probabilities (plus the sampled token's) from ``vllm serve``.

    The teacher distribution the statistics and objectives see holds those log-probabilities exactly and
    spreads the remaining mass evenly over the other tokens (the largest-entropy completion of what was
    shipped; its top-k are the shipped ones). ``TopKDivergence(k)`` and ``SampledTokenPG`` read only shipped
    values and are exact; full-vocabulary divergences and the statistics are those of that completion.
    Token ids the tokenizer does not have (padded embedding rows) are dropped.

    Args:
        k: top tokens per position (the server needs ``--max-logprobs`` >= k).
        url, model, timeout_s, retries, backoff_s, rows_per_request, concurrency: see ``ServedTeacher``.
    """

    def __init__(self, url: str, model: str, k: int = 64, timeout_s: float = 120.0, retries: int = 3,
                 backoff_s: float = 1.0, rows_per_request: int = 16, concurrency: int = 4) -> None:
        if k < 1:
            raise ValueError(f"model.teacher.k={k} is not allowed; use an integer >= 1.")
        super().__init__(url, model, timeout_s, retries, backoff_s, rows_per_request, concurrency)
        self.k = k

    @property
    def width(self) -> int:
        return TopKHead.width(self.k + 1)

    def build_head(self, vocab_size: int) -> nn.Module:
        return TopKHead(vocab_size)

    def request(self, rows: list[Span]) -> tuple[str, dict[str, Any]]:
        return "/v1/completions", {"model": self.model, "prompt": [r.tokens for r in rows], "max_tokens": 1,
                                   "temperature": 0.0, "prompt_logprobs": self.k}

    def check(self, vocab_size: int) -> None:
        probe = [Span([0, vocab_size - 1], 1)]
        try:
            self.fetch(probe)
        except TeacherServerError as error:
            raise ValueError(f"the teacher served at {self.endpoint.url} does not take the student's vocabulary "
                             f"of {vocab_size} tokens with prompt_logprobs={self.k} (serve the teacher with the "
                             f"generate runner and --max-logprobs {self.k} or more): {error}") from None

    def parse(self, answer: Any, rows: list[Span], url: str) -> list[torch.Tensor]:
        choices = _choices(answer, len(rows), url)
        return [self._row(choice.get("prompt_logprobs"), row, url) for choice, row in zip(choices, rows)]

    def _row(self, entries: Any, row: Span, url: str) -> torch.Tensor:
        """``[columns, 1 + 2m]`` packed rows (``TopKHead``'s layout) for one sequence's completion."""
        if not isinstance(entries, list) or len(entries) != len(row.tokens):
            raise malformed(url, f"prompt_logprobs for a {len(row.tokens)}-token prompt is not a list of that length")
        m = self.k + 1
        positions = range(row.offset, len(row.tokens))
        return TopKHead.pack([self._pairs(entries[p], row.tokens[p], m, url) for p in positions], m, self.vocab_size)

    def _pairs(self, entry: Any, token: int, m: int, url: str) -> dict[int, float]:
        """One position's (token id -> log-probability) pairs, checked, without ids past the vocabulary."""
        try:
            pairs = {int(t): float(v["logprob"]) for t, v in entry.items()}
        except (AttributeError, KeyError, TypeError, ValueError):
            raise malformed(url, f"a prompt_logprobs entry is not {{token id: {{logprob: ...}}}} ({str(entry)[:80]})") from None
        if token not in pairs or len(pairs) > m or not all(math.isfinite(v) and v <= 1e-4 for v in pairs.values()):
            raise malformed(url, f"a prompt_logprobs entry lacks the sampled token {token}, has more than {m} "
                                 "tokens, or holds a log-probability that is not finite and <= 0")
        return {t: min(v, 0.0) for t, v in pairs.items() if t < self.vocab_size}


@register_teacher
class VLLMHidden(ServedTeacher):
    """The teacher's exact full-vocabulary distribution: its final hidden states from vLLM's pooling runner,
    its ``lm_head`` held on the student's side (read from the checkpoint ``head``).

    Args:
        head: the teacher checkpoint (hub id or directory) whose ``lm_head`` (or tied embedding) is loaded.
        head_dtype: the head's dtype (float32, bfloat16, float16).
        wire_dtype: the hidden states' dtype on the wire (vLLM's ``embed_dtype``): float32, or half the bytes
            in bfloat16 / float16, lossless when the server computes in that dtype (a bf16 teacher's).
        url, model, timeout_s, retries, backoff_s, rows_per_request, concurrency: see ``ServedTeacher``.
    """

    def __init__(self, url: str, model: str, head: str, head_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
                 wire_dtype: Literal["float32", "bfloat16", "float16"] = "float32", timeout_s: float = 120.0,
                 retries: int = 3, backoff_s: float = 1.0, rows_per_request: int = 16, concurrency: int = 4) -> None:
        super().__init__(url, model, timeout_s, retries, backoff_s, rows_per_request, concurrency)
        for name, value in (("head_dtype", head_dtype), ("wire_dtype", wire_dtype)):
            if value not in WIRE:
                raise ValueError(f"model.teacher.{name}={value!r} is not allowed; use one of {', '.join(WIRE)}.")
        self.head, self.head_dtype, self.wire_dtype = head, head_dtype, wire_dtype
        self.hidden_size = 0

    @property
    def width(self) -> int:
        return self.hidden_size

    def build_head(self, vocab_size: int) -> nn.Module:
        head = load_lm_head(self.head, vocab_size, self.head_dtype)
        self.hidden_size = head.in_features
        return head

    def positions(self, rows: list[Span]) -> int:
        return sum(len(r.tokens) - 1 for r in rows)

    def request(self, rows: list[Span]) -> tuple[str, dict[str, Any]]:
        # the last token predicts nothing: each sequence is sent without it (as completion_hidden does)
        return "/pooling", {"model": self.model, "input": [r.tokens[:-1] for r in rows], "task": "token_embed",
                            "use_activation": False, "encoding_format": "base64", "embed_dtype": self.wire_dtype,
                            "endianness": "little"}

    def check(self, vocab_size: int) -> None:
        try:
            self.fetch([Span([0, vocab_size - 1, 0], 1)])
        except TeacherServerError as error:
            raise ValueError(f"the teacher served at {self.endpoint.url} does not return {self.hidden_size}-wide "
                             f"final hidden states for the student's vocabulary of {vocab_size} tokens (is it "
                             f"the checkpoint model.teacher.head={self.head!r}, started with the pooling flags "
                             f"of the README?): {error}") from None

    def parse(self, answer: Any, rows: list[Span], url: str) -> list[torch.Tensor]:
        items = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(items, list) or len(items) != len(rows):
            raise malformed(url, f"expected {len(rows)} pooling results, got {type(items).__name__}")
        out = []
        for item, row in zip(sorted(items, key=_index), rows):
            hidden = _floats(item.get("data") if isinstance(item, dict) else None, WIRE[self.wire_dtype], url)
            if hidden.numel() != (len(row.tokens) - 1) * self.width:
                raise malformed(url, f"{hidden.numel()} values for {len(row.tokens) - 1} positions of width {self.width}")
            hidden = hidden.view(len(row.tokens) - 1, self.width)
            if not torch.isfinite(hidden).all():
                raise malformed(url, "hidden states that are not finite")
            out.append(hidden[row.offset - 1 : row.offset - 1 + row.columns])  # [columns, d]
        return out


def _index(item: Any) -> int:
    return item.get("index", 0) if isinstance(item, dict) else 0


def _floats(data: Any, dtype: torch.dtype, url: str) -> torch.Tensor:
    """Little-endian values of ``dtype`` from base64 text, as a 1-d tensor."""
    if not isinstance(data, str):
        raise malformed(url, "pooling data is not a base64 string")
    try:
        raw = bytearray(base64.b64decode(data, validate=True))
    except ValueError:
        raise malformed(url, "pooling data is not valid base64") from None
    size = dtype.itemsize
    if len(raw) % size:
        raise malformed(url, f"{len(raw)} bytes is no whole number of {size}-byte values")
    return torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)


def _choices(answer: Any, count: int, url: str) -> list[dict[str, Any]]:
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or len(choices) != count or not all(isinstance(c, dict) for c in choices):
        raise malformed(url, f"expected {count} choices")
    return sorted(choices, key=_index)

