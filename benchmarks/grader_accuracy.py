"""Score the checker's case table (tests/data/grader_cases.jsonl) with tiplight and with Math-Verify.

Math-Verify runs with its defaults, `verify(parse(gold), parse(response))`, the gold wrapped in
`\\boxed{}` as its README recommends (a bare gold such as `\\dfrac{1}{3}` otherwise parses to nothing).

    python benchmarks/grader_accuracy.py > benchmarks/results/grader_accuracy.txt
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from tiplight.evals import grade

CASES = Path(__file__).resolve().parents[1] / "tests" / "data" / "grader_cases.jsonl"


def math_verify_grade(response: str, gold: str) -> bool:
    """Math-Verify 0.9 with default configs; any exception counts as a rejection."""
    from math_verify import parse, verify

    try:
        return bool(verify(parse("\\boxed{" + gold + "}"), parse(response)))
    except Exception:
        return False


def main() -> None:
    rows = [json.loads(line) for line in CASES.read_text().splitlines() if line.strip()]
    ours, theirs = [], []
    start = time.perf_counter()
    for r in rows:
        ours.append(grade(r["response"], r["gold"]) == r["expected"])
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    for r in rows:
        theirs.append(math_verify_grade(r["response"], r["gold"]) == r["expected"])
    theirs_s = time.perf_counter() - start
    _table(rows, ours, theirs)
    print(f"\ntime: tiplight {ours_s:.1f} s, math-verify {theirs_s:.1f} s (cold start included)")
    print("\ncases where the two disagree (expected verdict, then who is right):")
    for r, a, b in zip(rows, ours, theirs):
        if a != b:
            who = "tiplight" if a else "math-verify"
            print(
                f"  [{r['category']}] expected={r['expected']!s:5} right={who:11} "
                f"gold={r['gold']!r} response={r['response'][:70]!r}"
            )
    wrong = [r for r, a in zip(rows, ours) if not a]
    print(f"\ntiplight errors: {len(wrong)}")
    for r in wrong:
        print(
            f"  [{r['category']}] expected={r['expected']} gold={r['gold']!r} response={r['response'][:70]!r}"
        )


def _table(rows: list[dict], ours: list[bool], theirs: list[bool]) -> None:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups["all"].append(i)
        groups["hard" if r["hard"] else "easy"].append(i)
        groups["expected True" if r["expected"] else "expected False"].append(i)
    print(f"{'subset':16} {'n':>4} {'tiplight':>10} {'math-verify':>12}")
    for name, idx in groups.items():
        a = sum(ours[i] for i in idx) / len(idx)
        b = sum(theirs[i] for i in idx) / len(idx)
        print(f"{name:16} {len(idx):>4} {a:>10.1%} {b:>12.1%}")
    cats: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        if r["hard"]:
            cats[r["category"]].append(i)
    print(f"\nhard cases by category\n{'category':22} {'n':>3} {'tiplight':>9} {'math-verify':>12}")
    for name, idx in sorted(cats.items()):
        print(f"{name:22} {len(idx):>3} {sum(ours[i] for i in idx):>9} {sum(theirs[i] for i in idx):>12}")


if __name__ == "__main__":
    sys.exit(main())
