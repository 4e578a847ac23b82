"""`grade` and `grade_many`: extraction and the exact fast path in-process, sympy in killable workers.

The common case (identical strings, integers, fractions, decimals, base-b numerals, words, and any
structure of those) costs microseconds and never leaves the process. Only an undecided comparison
goes to a worker subprocess (`pool.py`) with a hard deadline; a timeout or any failure grades False.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from tiplight.evals.equivalence import FastComparator, Undecided, equivalent
from tiplight.evals.extract import extract_answer
from tiplight.evals.pool import get_pool

MAX_ANSWER_CHARS = 4000  # longer extracted answers are compared as exact strings only
_CACHE: OrderedDict[tuple[str, str], bool] = OrderedDict()
_CACHE_SIZE = 50_000
_CACHE_LOCK = threading.Lock()


def gold_answer(gold: str) -> str:
    """The answer in a gold string: its last box when it has one (a full solution), else the string."""
    if "\\boxed" in gold or "\\fbox" in gold:
        return extract_answer(gold) or gold
    return gold.strip()


def fast_verdict(pred: str, gold: str) -> bool | None:
    """The in-process verdict for an extracted pred vs a gold answer, or None when sympy is needed."""
    if pred.strip() == gold.strip():
        return True
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    try:
        return equivalent(pred, gold, FastComparator())
    except Undecided:
        return None


def _prepare(response: str, gold: str) -> tuple[str, str, bool | None]:
    """(pred, gold answer, verdict-or-None) for one pair; never raises."""
    try:
        if isinstance(gold, (int, float)) and not isinstance(gold, bool):
            gold = str(gold)  # AIME-style integer golds
        pred = extract_answer(response)
        if pred is None or not isinstance(gold, str):
            return "", "", False
        gold = gold_answer(gold)
        if not gold:
            return pred, gold, False
        return pred, gold, fast_verdict(pred, gold)
    except Exception:  # a checker bug must cost one verdict, not a training run
        return "", "", False


def _cached(key: tuple[str, str]) -> bool | None:
    with _CACHE_LOCK:
        return _CACHE.get(key)


def _remember(key: tuple[str, str], verdict: bool) -> None:
    with _CACHE_LOCK:
        _CACHE[key] = verdict
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)


def _slow_verdict(pred: str, gold: str, timeout: float, started: float) -> bool:
    """Worker verdict within `timeout` seconds of `started`; timeouts are False and not cached."""
    key = (pred, gold)
    hit = _cached(key)
    if hit is not None:
        return hit
    verdict = get_pool().run(pred, gold, started + timeout)
    if verdict is None:
        return False
    _remember(key, verdict)
    return verdict


def grade(response: str, gold: str, *, timeout: float = 5.0) -> bool:
    """Is the final answer in `response` (a full model output or a bare answer) equivalent to `gold`?

    Returns within `timeout` seconds (plus process start-up jitter), from any thread or process;
    never raises; False on any failure or timeout.
    """
    started = time.monotonic()
    pred, gold, verdict = _prepare(response, gold)
    if verdict is not None:
        return verdict
    try:
        return _slow_verdict(pred, gold, timeout, started)
    except Exception:
        return False


def grade_many(
    responses: Sequence[str], golds: Sequence[str], *, timeout: float = 5.0, num_workers: int | None = None
) -> list[bool]:
    """`grade` over pairs: fast paths in-process, the rest spread over a pool of worker processes.

    `timeout` applies to each pair from the moment a worker is free for it.
    """
    if len(responses) != len(golds):
        raise ValueError(
            f"grade_many got {len(responses)} responses but {len(golds)} golds; they must pair up."
        )
    prepared = [_prepare(r, g) for r, g in zip(responses, golds)]
    verdicts = [v for _, _, v in prepared]
    todo = sorted({(p, g) for p, g, v in prepared if v is None})
    if todo:
        pool = get_pool(num_workers)

        def one(pair: tuple[str, str]) -> bool:
            try:
                return _slow_verdict(pair[0], pair[1], timeout, time.monotonic())
            except Exception:
                return False

        with ThreadPoolExecutor(max_workers=pool.size) as executor:
            slow = dict(zip(todo, executor.map(one, todo)))
        verdicts = [slow[(p, g)] if v is None else v for p, g, v in prepared]
    return [bool(v) for v in verdicts]
