"""JSON over HTTP to a served teacher: bounded retries, a time limit per request, and one sentence naming
the endpoint when it is down, slow, or answers with something that is not the expected payload.

Standard library only (``urllib``): the training processes need no HTTP client package."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


class TeacherServerError(RuntimeError):
    """The served teacher could not give a step's teacher quantities; the message is one sentence that
    names the endpoint and what went wrong (and, once ``callbacks.Interruption`` saved one, the checkpoint
    to resume from)."""

    checkpoint: str | None = None

    def __str__(self) -> str:
        text = super().__str__()
        if self.checkpoint is None:
            return text
        return f"{text.rstrip('.')}; a resumable checkpoint was saved: resume with --ckpt_path {self.checkpoint}."


@dataclass(frozen=True)
class Endpoint:
    """Where the teacher is served and how patiently it is asked.

    Args:
        url: the server's base address, e.g. ``http://teacher-node:8000`` (vLLM's ``--host``/``--port``).
        timeout_s: seconds without an answer (connecting, or between bytes of one) before a request counts as
            failed; a request carries ``rows_per_request`` rollouts.
        retries: further attempts after a failed one (connection refused, time-out, HTTP 5xx), each after
            ``backoff_s`` times 2^attempt seconds. A 4xx answer or a malformed payload is not retried.
        backoff_s: the first wait between attempts, in seconds.
    """

    url: str
    timeout_s: float = 120.0
    retries: int = 3
    backoff_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"model.teacher.url={self.url!r} is not allowed; give http://host:port.")
        if self.timeout_s <= 0:
            raise ValueError(f"model.teacher.timeout_s={self.timeout_s} is not allowed; use seconds > 0.")
        if self.retries < 0:
            raise ValueError(f"model.teacher.retries={self.retries} is not allowed; use an integer >= 0.")

    def address(self, path: str) -> str:
        return self.url.rstrip("/") + path


class _Retryable(Exception):
    """A failure worth another attempt (the server may come back)."""


def post_json(endpoint: Endpoint, path: str, payload: dict[str, Any] | None = None) -> tuple[Any, int]:
    """POST ``payload`` (GET when None) to ``endpoint``'s ``path``; the decoded JSON answer and its size in
    bytes. Raises ``TeacherServerError`` after ``endpoint.retries`` further attempts."""
    url = endpoint.address(path)
    last = ""
    for attempt in range(endpoint.retries + 1):
        if attempt:
            time.sleep(endpoint.backoff_s * 2 ** (attempt - 1))
        try:
            return _once(url, payload, endpoint.timeout_s)
        except _Retryable as failure:
            last = str(failure)
    raise TeacherServerError(f"the served teacher at {url} failed {endpoint.retries + 1} times ({last}); the "
                             "step was not taken: start or fix the server (see README, Teacher placement).")


def _once(url: str, payload: dict[str, Any] | None, timeout_s: float) -> tuple[Any, int]:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            body = answer.read()
    except urllib.error.HTTPError as error:
        detail = error.read()[:300].decode(errors="replace")
        if error.code >= 500:
            raise _Retryable(f"HTTP {error.code}: {detail}") from None
        raise TeacherServerError(f"the served teacher at {url} refused the request with HTTP {error.code} "
                                 f"({detail.strip()}); the step was not taken.") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as error:  # and cut-off answers
        reason = getattr(error, "reason", error)
        raise _Retryable(f"no answer within {timeout_s:g} s" if isinstance(reason, (socket.timeout, TimeoutError))
                         else f"{type(reason).__name__}: {reason}") from None
    try:
        return json.loads(body), len(body)
    except ValueError:
        raise malformed(url, f"the answer is not JSON ({body[:80]!r})") from None


def malformed(url: str, what: str) -> TeacherServerError:
    """The error for an answer that does not hold what was asked for."""
    return TeacherServerError(f"the served teacher at {url} sent a malformed payload: {what}; the step was "
                              "not taken (is it the server this config names, with the flags the README gives?).")
