"""The checker under hostile text and load: review categories, stalls, warm workers, threads."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tiplight.evals import extract_answer, grade, grade_many, warmup
from tiplight.evals import grader as grader_module
from tiplight.evals.pool import get_pool

DATA = Path(__file__).parent / "data"
REVIEW = [json.loads(line) for line in (DATA / "grader_review_cases.jsonl").open()]
TABLE = [json.loads(line) for line in (DATA / "grader_cases.jsonl").open()]
MB = 1_000_000
HOSTILE = {
    "spaces": " " * MB,
    "newlines": "\n" * MB,
    "backslashes": "\\" * MB,
    "boxes": "\\boxed{" * (MB // 7),
    "fracs": "\\frac{" * (MB // 6),
    "braces": "{" * MB,
    "answer sentence, then spaces": "The final answer" + " " * MB + "x",
    "spaces between boxes": "\\boxed{1}" + " " * MB + "\\boxed{2}",
    "answer lines": "\nanswer:" * (MB // 8),
    "mixed whitespace": " \n\t\\" * (MB // 4),
}


@pytest.mark.parametrize("case", REVIEW, ids=[f"{i}-{c['category']}" for i, c in enumerate(REVIEW)])
def test_review_categories(case):
    """Cases of my own making for each miss category of the independent review (its cases are held out)."""
    assert grade(case["response"], case["gold"]) is case["expected"]


def test_review_examples_from_the_issue():
    warmup()
    assert grade(r"\frac{10\sqrt{10.5}}{27}", r"\frac{5\sqrt{42}}{27}", timeout=1.5) is True
    start = time.monotonic()
    assert grade("The final answer" + " " * 30000 + "x", "1", timeout=2.0) is False
    assert time.monotonic() - start < 3.0


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        (r"roots \boxed{-2} \quad\text{and}\quad \boxed{1}.", "-2, 1"),
        (r"$x = \boxed{3}$ or $x = \boxed{-5}$", r"3 \text{ or } -5"),
        (r"First \boxed{3}, but then the answer is \boxed{7}", "7"),
        ("Final Answer: The largest $n$ is 34.", "34"),
        ("Final Answer: the area equals $\\frac{9}{2}$ square units.", "\\frac{9}{2}"),
        ("So the three values are 1, 1, 1", "1, 1, 1"),
        ("the probability is 2/3.", "2/3"),
    ],
)
def test_extract_answer_review_forms(text, answer):
    assert extract_answer(text) == answer


@pytest.mark.parametrize("name", list(HOSTILE))
def test_no_stall_on_a_megabyte_of_hostile_text(name):
    """Every call returns within timeout + 1 s, as response and as gold, whatever the text."""
    text, timeout = HOSTILE[name], 1.0
    for response, gold in ((text, "1"), ("1", text), (text, text[:2000])):
        start = time.monotonic()
        grade(response, gold, timeout=timeout)
        assert time.monotonic() - start < timeout + 1.0
    start = time.monotonic()
    extract_answer(text)  # in-process and linear: the same bound, though no worker is involved
    assert time.monotonic() - start < timeout + 1.0


def test_warmup_warms_every_worker():
    warmup()
    pool = get_pool()
    assert len(pool._idle) == pool.size and all(w.ready for w in pool._idle)


def _verdicts(rows: list[dict], threads: int) -> list[bool]:
    grader_module._CACHE.clear()  # each run must reach the workers itself
    with ThreadPoolExecutor(threads) as ex:
        return list(ex.map(lambda r: grade(r["response"], r["gold"]), rows))


def test_same_verdicts_from_8_threads_under_cpu_load():
    """The table graded sequentially, then from 8 threads while 2 busy processes load the CPUs."""
    rows = TABLE[::3] + REVIEW[::2]
    warmup()
    sequential = _verdicts(rows, 1)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        loaded = _verdicts(rows, 8)
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()
    assert loaded == sequential
    assert sum(s == r["expected"] for s, r in zip(sequential, rows)) == len(rows)


def test_grade_many_matches_grade_on_review_cases():
    verdicts = grade_many([c["response"] for c in REVIEW], [c["gold"] for c in REVIEW], num_workers=2)
    assert verdicts == [c["expected"] for c in REVIEW]


@pytest.mark.parametrize(
    ("response", "gold", "own_guard"),
    [
        (r"\boxed{\frac{1}{2004!}}", r"\frac{1}{2006!}", True),  # chop reads both as 0
        (r"\boxed{\frac{1}{2^{99}}}", r"\frac{1}{2^{98}}", True),
        (r"\boxed{1,1,1}", "1", True),  # read as the set {1}
        (r"\boxed{4m}", "4", False),  # the letter dropped as a unit: tiplight's own reading settles it
    ],
)
def test_math_verify_wrong_accepts_are_vetoed(response, gold, own_guard):
    """Each pair is accepted by Math-Verify's own parse + verify, and rejected by `grade`; `own_guard`:
    the guarded Math-Verify reading rejects it even without tiplight's reading of the answers."""
    from math_verify import verify

    from tiplight.evals.mathverify import parse_gold, parse_response, verdict

    assert verify(parse_gold(gold), parse_response(response), timeout_seconds=None)
    assert verdict(response, gold) is not own_guard
    assert grade(response, gold) is False


def test_cold_start_is_not_charged_to_the_first_verdict():
    """A fresh process grades a worker-bound pair right on its first call, without warmup()."""
    code = (
        "import time; from tiplight.evals import grade; t = time.monotonic(); "
        r"ok = grade(r'\frac{10\sqrt{10.5}}{27}', r'\frac{5\sqrt{42}}{27}', timeout=1.5); "
        "print(ok, time.monotonic() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.stdout.split()[0] == "True", out.stderr[-500:]
