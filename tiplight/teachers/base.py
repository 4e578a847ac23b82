"""A teacher served apart from training: the `ServedTeacher` interface and its registry.

A served teacher stands where the colocated teacher's decoder stood: per micro-batch it returns a tensor
``[r, C, D]`` at completion positions, and ``get_output_embeddings()`` a head that turns ``[n, D]`` rows into
the teacher's ``[n, V]`` logits. The statistics and the loss are then the same chunked code as for a local
teacher (``stats.token_stats_and_loss``, ``objective.selected_loss_sum``): a served exact teacher ships
final hidden states and its head is the teacher's own ``lm_head``; a served top-k teacher ships log-
probabilities and its head rebuilds a distribution from them.

Requests go out on worker threads when a micro-batch is submitted, so the server works while the student
runs its forward; a micro-batch's rows are sent ``rows_per_request`` at a time.
"""

from __future__ import annotations

import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tiplight.registry import Plugin, Registry
from tiplight.rollout import Rollout
from tiplight.teachers.transport import Endpoint, TeacherServerError, malformed, post_json

PROBE_TEXT = "Teacher check: 12 + 34 = 46, (x - 1) / 2."


@dataclass(frozen=True)
class Span:
    """One rollout row as the server sees it: its real tokens (padding removed) and the index in them of
    completion column 0; columns ``0 .. len(tokens) - offset - 1`` exist."""

    tokens: list[int]
    offset: int

    @property
    def columns(self) -> int:
        return len(self.tokens) - self.offset


def spans(rollout: Rollout) -> list[Span]:
    """Each row's real tokens: left-padded prompt and right-padded completion stripped. A row whose real
    tokens are not contiguous cannot be sent as one sequence and is refused."""
    out = []
    for ids, mask in zip(rollout.input_ids, rollout.attention_mask):
        real = mask.nonzero()[:, 0]
        start, end = int(real[0]), int(real[-1]) + 1
        if end - start != len(real):
            raise ValueError("a rollout row has padding between its tokens; a served teacher needs each row's "
                             "tokens contiguous (left-padded prompt, right-padded completion).")
        out.append(Span(ids[start:end].tolist(), rollout.prompt_length - start))
    return out


class Traffic:
    """Requests, answer bytes, positions answered (every token of each sequence, the prompt's included)
    and completion tokens among them since the last ``take`` (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = [0, 0, 0, 0, 0.0]  # requests, bytes, sequence tokens, completion tokens, wait seconds

    def add(self, size: int = 0, positions: int = 0, rows: Sequence[Span] = (), wait_s: float = 0.0) -> None:
        with self._lock:
            new = (1 if size else 0, size, positions, sum(r.columns for r in rows), wait_s)
            self.counts = [a + b for a, b in zip(self.counts, new)]

    def take(self) -> dict[str, float]:
        """``teacher/requests``, ``teacher/bytes``, ``teacher/bytes_per_token`` (per completion token),
        ``teacher/bytes_per_position`` (per sequence token) and ``teacher/wait_s`` (time training waited
        for answers after its own forwards: 0 when the server kept up) since the last call."""
        with self._lock:
            (requests, size, positions, tokens, wait), self.counts = self.counts, [0, 0, 0, 0, 0.0]
        return {"teacher/requests": float(requests), "teacher/bytes": float(size),
                "teacher/bytes_per_token": size / max(tokens, 1),
                "teacher/bytes_per_position": size / max(positions, 1), "teacher/wait_s": wait}


class Pending:
    """The teacher tensor of one submitted micro-batch, ``[r, C, D]``, once its requests are answered."""

    def __init__(self, parts: list[Future], shape: tuple[int, int, int], device: torch.device,
                 traffic: Traffic) -> None:
        self.parts, self.shape, self.device, self.traffic = parts, shape, device, traffic

    def result(self) -> torch.Tensor:
        start = time.perf_counter()
        rows = [row for part in self.parts for row in part.result()]  # [n_i, D] each, in row order
        self.traffic.add(wait_s=time.perf_counter() - start)
        out = torch.zeros(self.shape, dtype=rows[0].dtype)  # [r, C, D]; past a row's end: 0 (never valid)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row[: self.shape[1]]
        return out.to(self.device)


class ServedTeacher(Plugin, ABC):
    """A frozen teacher behind an inference server (chosen in YAML as ``model.teacher: {class_path: ...}``).

    Subclasses say what to ask (``request``), how to read the answer (``parse``), what the head is
    (``build_head``) and how to check the endpoint at start-up (``check``).

    Args:
        url: the server's base address, e.g. ``http://teacher-node:8000``.
        model: the served model name (``vllm serve ... --served-model-name``); checked at start-up.
        timeout_s: seconds without an answer before a request counts as failed.
        retries: further attempts after a failure (connection refused, time-out, HTTP 5xx).
        backoff_s: the first wait between attempts, doubled after each.
        rows_per_request: rollout rows batched into one request.
        concurrency: requests in flight at once.
    """

    def __init__(self, url: str, model: str, timeout_s: float = 120.0, retries: int = 3, backoff_s: float = 1.0,
                 rows_per_request: int = 16, concurrency: int = 4) -> None:
        for name, value in (("rows_per_request", rows_per_request), ("concurrency", concurrency)):
            if value < 1:
                raise ValueError(f"model.teacher.{name}={value} is not allowed; use an integer >= 1.")
        self.endpoint = Endpoint(url, timeout_s, retries, backoff_s)
        self.model, self.rows_per_request, self.concurrency = model, rows_per_request, concurrency
        self.vocab_size = 0
        self.max_model_len: int | None = None
        self._head: nn.Module | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._traffic = Traffic()

    # --- start-up ------------------------------------------------------------------------------------
    def connect(self, tokenizer: Any, vocab_size: int, device: torch.device | None = None,
                allow_template_mismatch: bool = False) -> None:
        """Check the endpoint against the student's tokenizer, chat template and vocabulary, and build the
        head. ``allow_template_mismatch`` (``model.allow_template_mismatch``) makes a template difference a
        warning."""
        self.vocab_size = vocab_size
        self.check_model()
        self.check_tokenizer(tokenizer)
        self.check_chat_template(tokenizer, allow_template_mismatch)
        self._head = self.build_head(vocab_size).to(device or "cpu")
        self.check(vocab_size)
        self._traffic.take()  # the probes are no step's traffic

    def check_model(self) -> None:
        answer, _ = post_json(self.endpoint, "/v1/models")
        try:
            served = {entry["id"]: entry for entry in answer["data"]}
        except (KeyError, TypeError):
            raise malformed(self.endpoint.address("/v1/models"), "no model list") from None
        if self.model not in served:
            raise ValueError(f"model.teacher.model={self.model!r} is not served at {self.endpoint.url}; it serves "
                             f"{', '.join(map(repr, served))}.")
        self.max_model_len = served[self.model].get("max_model_len")

    def check_length(self, tokens: int, what: str) -> None:
        """Sequences of ``tokens`` (``what`` says which settings give them) fit the server's context."""
        if self.max_model_len is not None and tokens > self.max_model_len:
            raise ValueError(f"the teacher served at {self.endpoint.url} takes at most {self.max_model_len} tokens "
                             f"a sequence but rollouts reach {tokens} ({what}); start it with --max-model-len "
                             f"{tokens} or more, or shorten the rollouts.")

    def check_tokenizer(self, tokenizer: Any) -> None:
        """The server's tokenizer encodes a probe text as the student's does."""
        answer, _ = post_json(self.endpoint, "/tokenize", {"model": self.model, "prompt": PROBE_TEXT,
                                                           "add_special_tokens": False})
        mine = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        theirs = answer.get("tokens") if isinstance(answer, dict) else None
        if theirs != mine:
            raise ValueError(f"the teacher served at {self.endpoint.url} tokenizes differently from the student "
                             f"({PROBE_TEXT!r}: {theirs} vs {mine}); teacher and student must share a tokenizer.")

    def check_chat_template(self, tokenizer: Any, allow: bool) -> None:
        """The server renders a probe conversation with its chat template to the token ids the student's
        template gives (a teacher scoring turns in a format it does not use is OPD's most reported failure)."""
        if getattr(tokenizer, "chat_template", None) is None:
            return
        messages = [{"role": "user", "content": PROBE_TEXT}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        mine = tokenizer(text, add_special_tokens=False)["input_ids"]
        try:
            answer, _ = post_json(self.endpoint, "/tokenize", {"model": self.model, "messages": messages,
                                                               "add_generation_prompt": True})
            theirs = answer.get("tokens") if isinstance(answer, dict) else None
        except TeacherServerError:  # vLLM refuses chat requests of a model that has no chat template
            theirs = None
        if theirs == mine:
            return
        found = (f"the teacher served at {self.endpoint.url} formats conversations differently from the student "
                 f"(a probe conversation: {theirs if theirs is None else len(theirs)} vs {len(mine)} tokens)")
        if allow:
            warnings.warn(f"{found} (allowed by model.allow_template_mismatch).", stacklevel=2)
            return
        raise ValueError(f"{found}; the teacher would score the student's turns in a format it does not use: serve "
                         "it with the student's template (vllm serve --chat-template), or set "
                         "model.allow_template_mismatch: true if the difference is on purpose.")

    @abstractmethod
    def check(self, vocab_size: int) -> None:
        """Ask the endpoint once with a token id ``vocab_size - 1``: it must accept it and answer in shape."""

    @abstractmethod
    def build_head(self, vocab_size: int) -> nn.Module:
        """The head ``[n, D] -> [n, V]`` held on the student's side."""

    def get_output_embeddings(self) -> nn.Module:
        """The head (the interface a local teacher's ``get_output_embeddings`` has)."""
        if self._head is None:
            raise RuntimeError("the served teacher is not connected yet (ServedTeacher.connect).")
        return self._head

    # --- requests ------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def width(self) -> int:
        """D: the size of each position's row."""

    @abstractmethod
    def request(self, rows: list[Span]) -> tuple[str, dict[str, Any]]:
        """The path and JSON body asking for ``rows``."""

    @abstractmethod
    def parse(self, answer: Any, rows: list[Span], url: str) -> list[torch.Tensor]:
        """Each row's ``[columns, D]`` tensor from the answer; ``malformed(url, ...)`` if it does not fit."""

    def submit(self, rollout: Rollout) -> Pending:
        """Send ``rollout``'s rows now (worker threads); ``Pending.result()`` waits for them."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="tiplight-teacher")
        rows = spans(rollout)
        batches = [rows[i : i + self.rows_per_request] for i in range(0, len(rows), self.rows_per_request)]
        parts = [self._pool.submit(self.fetch, batch) for batch in batches]
        shape = (len(rows), rollout.completion_mask.shape[1], self.width)
        return Pending(parts, shape, rollout.input_ids.device, self._traffic)

    def fetch(self, rows: list[Span]) -> list[torch.Tensor]:
        path, body = self.request(rows)
        answer, size = post_json(self.endpoint, path, body)
        out = self.parse(answer, rows, self.endpoint.address(path))
        self._traffic.add(size, self.positions(rows), rows)
        return out

    def positions(self, rows: list[Span]) -> int:
        """Positions the server answers for ``rows`` (each sequence's every token)."""
        return sum(len(r.tokens) for r in rows)

    def traffic(self) -> dict[str, float]:
        """This process's requests and bytes received since the last call (logged once per step)."""
        return self._traffic.take()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": None}  # threads do not pickle; a copy starts its own


# the plug point's names, as every registry's
_REGISTRY: Registry[type[ServedTeacher]] = Registry(ServedTeacher, "served teacher")
register_teacher = _REGISTRY.register
get_teacher = _REGISTRY.build
list_teachers = _REGISTRY.names
