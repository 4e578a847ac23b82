"""Time `grade` and `extract_answer` on a megabyte of degenerate text: every call must return within
its timeout + 1 s (the linear-time requirement of issue 11).

Each input is graded as the response (against "1" and against its own first 2000 characters) and as
the gold (against "1"), with `timeout=2.0`, after `warmup()`.

    python benchmarks/grader_stall.py > benchmarks/results/grader_stall.txt
"""

from __future__ import annotations

import time

from tiplight.evals import extract_answer, grade, warmup
from tiplight.evals.pool import get_pool

MB = 1_000_000
TIMEOUT = 2.0
INPUTS = {
    "spaces": " " * MB,
    "newlines": "\n" * MB,
    "backslashes": "\\" * MB,
    "\\boxed{ repeated": "\\boxed{" * (MB // 7),
    "\\frac{ repeated": "\\frac{" * (MB // 6),
    "\\text{ repeated": "\\text{" * (MB // 6),
    "braces": "{" * MB,
    "dollars": "$" * MB,
    "stars": "*" * MB,
    "digits and commas": "1," * (MB // 2),
    "'The final answer' + 1 MB spaces + x": "The final answer" + " " * MB + "x",
    "'The final answer' + 30k spaces + x": "The final answer" + " " * 30000 + "x",
    "box, 1 MB spaces, box": "\\boxed{1}" + " " * MB + "\\boxed{2}",
    "'the answer is' + spaces": "the answer is" + " " * MB,
    "'Final Answer: The largest' + spaces": "Final Answer: The largest" + " " * MB + "n is 34.",
    "answer lines": "\nanswer:" * (MB // 8),
    "mixed whitespace and backslashes": " \n\t\\" * (MB // 4),
    "box around spaces": "\\boxed{" + " " * MB + "}",
}


def timed(fn, *args, **kwargs) -> float:
    start = time.monotonic()
    fn(*args, **kwargs)
    return time.monotonic() - start


def main() -> None:
    warmup()
    print(f"timeout {TIMEOUT} s; a stall is a call longer than {TIMEOUT + 1} s")
    print(
        f"{'input (1 MB unless named)':40} {'as response':>11} {'vs itself':>10} {'as gold':>8} {'extract':>8}"
    )
    worst = 0.0
    for name, text in INPUTS.items():
        row = [
            timed(grade, text, "1", timeout=TIMEOUT),
            timed(grade, text, text[:2000], timeout=TIMEOUT),
            timed(grade, "1", text, timeout=TIMEOUT),
            timed(extract_answer, text),
        ]
        worst = max(worst, *row)
        print(f"{name:40} " + " ".join(f"{t:>9.2f} s" for t in row))
    pool = get_pool()
    print(f"slowest call: {worst:.2f} s; comparisons that overran and were killed: {pool.replaced}")


if __name__ == "__main__":
    main()
