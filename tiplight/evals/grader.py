"""`grade` and `grade_many`: linear-time extraction and exact numbers in-process, the rest in workers.

The common case (identical strings, integers, fractions, decimals, base-b numerals, words, and any
structure of those) costs microseconds and never leaves the process. Anything else goes to a warm
worker subprocess (`pool.py`) with a hard deadline, where two readers decide: tiplight's structural,
exact-first comparison of the extracted answer, then Math-Verify's own extraction and comparison of
the whole response under tiplight's guards (`mathverify.py`). Either accept counts; a timeout or any
failure grades False. No text is ever evaluated.

When `grade` is safe as an RL reward: call `warmup()` once, keep `timeout` >= 2 s, and verdicts are
a function of (response, gold) alone: comparisons run on warm workers, time spent waiting for a free
worker (other threads' heavy inputs, a replacement warming) is never charged to a comparison, an
overrun is retried once on another warm worker, and only a comparison that overruns twice grades
False (a pair that costly is what a reward should refuse anyway). It never accepts a list for a single gold (`1,1,1` for `1`),
fewer or more items than a find-all gold, an inequality restated for a gold interval (`x > 3` for
`(3, \\infty)`), complex infinity or nan, a decimal that is not the gold to the digits it gives,
gold x 100 or gold / 100 for a percent, or an answer taken from a chat-template tail. It is lenient
about notation (LaTeX or plain text, units, labels such as `x =`, `f(x) =`, `(p,q) =`), so it does not
push a policy towards one style; reward well-formed LaTeX separately if you need it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from tiplight.evals.equivalence import FastComparator, Undecided, equivalent, final_rejection
from tiplight.evals.extract import cut_template_tail, extract_answer
from tiplight.evals.pool import get_pool

MAX_ANSWER_CHARS = 4000  # longer extracted answers are compared as exact strings only
MAX_GOLD_SENT = 20_001  # longer golds are not read by Math-Verify (`mathverify.MAX_GOLD_CHARS`)
MATH_VERIFY_SCAN = 10_000  # characters from the end of a response that Math-Verify reads (its final answer)
_CACHE: OrderedDict[tuple[str, str, str], bool] = OrderedDict()
_CACHE_SIZE = 50_000
_CACHE_LOCK = threading.Lock()


def gold_answer(gold: str) -> str:
    """The answer in a gold string: its last box when it has one (a full solution), else the string."""
    if "\\boxed" in gold or "\\fbox" in gold:
        return extract_answer(gold) or gold
    return gold.strip()


def fast_verdict(pred: str, gold: str) -> bool | None:
    """The in-process verdict for an extracted pred vs a gold answer, or None when a worker is needed.

    True is final. False is final only when it is certain without another reading of the response:
    both answers are plain numbers (exact comparison), or the gold is a word or choice answer.
    """
    if pred.strip() == gold.strip():
        return True
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    try:
        verdict = equivalent(pred, gold, FastComparator())
    except Undecided:
        return None
    return True if verdict else (False if final_rejection(pred, gold) else None)


def _prepare(response: str, gold: str) -> tuple[str, str, bool | None]:
    """(pred, gold answer, verdict-or-None) for one pair; never raises."""
    try:
        if isinstance(gold, (int, float)) and not isinstance(gold, bool):
            gold = str(gold)  # AIME-style integer golds
        if not isinstance(response, str) or not isinstance(gold, str):
            return "", "", False
        answer = gold_answer(gold)
        if not answer:
            return "", answer, False
        pred = extract_answer(response)
        if pred is None:
            readable = response.strip() and len(answer) <= MAX_ANSWER_CHARS
            return "", answer, None if readable else False  # Math-Verify may still find one
        return pred, answer, fast_verdict(pred, answer)
    except Exception:  # a checker bug must cost one verdict, not a training run
        return "", "", False


def _cached(key: tuple[str, str, str]) -> bool | None:
    with _CACHE_LOCK:
        return _CACHE.get(key)


def _remember(key: tuple[str, str, str], verdict: bool) -> None:
    with _CACHE_LOCK:
        _CACHE[key] = verdict
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)


def _slow_verdict(response: str, pred: str, answer: str, gold: str, timeout: float) -> bool:
    """Worker verdict: `timeout` seconds of comparison on a warm worker (retried once after an overrun).
    `answer` is tiplight's reading of the `gold` string. Timeouts are False and not cached."""
    tail = cut_template_tail(response)[-MATH_VERIFY_SCAN:]
    key = (tail, pred, gold)
    hit = _cached(key)
    if hit is not None:
        return hit
    payload = {"pred": pred, "gold": answer, "raw_gold": gold[:MAX_GOLD_SENT], "response": tail}
    verdict = get_pool().run(payload, timeout)
    if verdict is None:
        return False
    _remember(key, verdict)
    return verdict


def grade(response: str, gold: str, *, timeout: float = 5.0) -> bool:
    """Is the final answer in `response` (a full model output or a bare answer) equivalent to `gold`?

    Callable from any thread or process; never raises; False on any failure or after a comparison
    overran `timeout` twice. A call takes at most 2 x `timeout` of comparison, plus any wait for a free
    worker, which is never charged to the verdict: while other threads' comparisons hold every worker,
    or the first call in a process waits for the pool to start (seconds of imports; `warmup()` does
    that up front). See the module docstring for RL-reward use.
    """
    get_pool()  # the first call starts the workers warming, even when its own verdict needs none
    pred, answer, verdict = _prepare(response, gold)
    if verdict is not None:
        return verdict
    try:
        return _slow_verdict(response, pred, answer, str(gold), timeout)
    except Exception:
        return False


def grade_many(
    responses: Sequence[str], golds: Sequence[str], *, timeout: float = 5.0, num_workers: int | None = None
) -> list[bool]:
    """`grade` over pairs: fast paths in-process, the rest spread over a pool of worker processes.

    `timeout` applies to each pair from the moment a warm worker takes it.
    """
    if len(responses) != len(golds):
        raise ValueError(
            f"grade_many got {len(responses)} responses but {len(golds)} golds; they must pair up."
        )
    prepared = [_prepare(r, g) for r, g in zip(responses, golds)]
    keys = [(r, p, a, str(g)) for r, g, (p, a, _) in zip(responses, golds, prepared)]
    todo = sorted({k for k, (_, _, v) in zip(keys, prepared) if v is None})
    slow: dict[tuple[str, str, str, str], bool] = {}
    if todo:
        pool = get_pool(num_workers)

        def one(item: tuple[str, str, str, str]) -> bool:
            try:
                return _slow_verdict(*item, timeout)
            except Exception:
                return False

        with ThreadPoolExecutor(max_workers=pool.size) as executor:
            slow = dict(zip(todo, executor.map(one, todo)))
    return [bool(slow[k] if v is None else v) for k, (_, _, v) in zip(keys, prepared)]


def warmup() -> None:
    """Start every grading worker and wait until each has imported sympy and Math-Verify (seconds).

    Grading works without it; it moves the start-up cost out of the first timed grades.
    """
    get_pool().warmup()
