"""Score tiplight's `grade` and Math-Verify side by side on three case sets.

- `table`: the checker's own case table (tests/data/grader_cases.jsonl), written alongside it: coverage.
- `mv-unit`: Math-Verify's hand-written regression tests (benchmarks/data/math_verify_cases.jsonl).
- `mv-real`: the real model outputs in Math-Verify's tests (OpenThoughts and NuminaMath generations).
- `nemo`: NeMo-Skills' `math_equal` test pairs, each in both directions (answer against answer).

Math-Verify runs as its tests run it: on its own cases with each test's options (match types, float
precision, set/relation asymmetry), on the table and the NeMo-Skills pairs with defaults and the gold wrapped in `\\boxed{}` as
its README recommends. Any exception counts as a rejection.

Then every case is graded again, sequentially and from 8 threads under CPU load, and the verdicts
compared (load independence).

    python benchmarks/grader_accuracy.py [--errors] > benchmarks/results/grader_accuracy.txt
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tiplight.evals import grade, warmup
from tiplight.evals import grader as grader_module
from tiplight.evals.pool import get_pool

ROOT = Path(__file__).resolve().parents[1]
SETS = {
    "table": ROOT / "tests" / "data" / "grader_cases.jsonl",
    "mv-unit": ROOT / "benchmarks" / "data" / "math_verify_cases.jsonl",
    "mv-real": ROOT / "benchmarks" / "data" / "math_verify_cases.jsonl",
    "nemo": ROOT / "benchmarks" / "data" / "nemo_skills_cases.jsonl",
}


def load(name: str) -> list[dict]:
    """The rows of one case set."""
    rows = [json.loads(line) for line in SETS[name].read_text().splitlines() if line.strip()]
    if name.startswith("mv-"):
        rows = [r for r in rows if r["split"] == name[3:]]
    return rows


def math_verify_grade(row: dict) -> bool:
    """Math-Verify 0.9 (`verify(parse(gold), parse(response))`) with the row's options."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    options = row.get("options")
    if options is None:  # the table: defaults, boxed gold
        try:
            return bool(verify(parse("\\boxed{" + row["gold"] + "}"), parse(row["response"])))
        except Exception:
            return False
    kinds = options.get("match_types", ["latex", "expr"])
    configs = [
        LatexExtractionConfig(boxed_match_priority=0) if k == "latex" else ExprExtractionConfig()
        for k in kinds
    ]
    if "match_types" not in options:  # test_yujianll calls parse() with its defaults
        configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    try:
        return bool(verify(
            parse(row["gold"], configs), parse(row["response"], configs),
            float_rounding=options.get("precision", 6),
            allow_set_relation_comp=options.get("allow_set_relation_comp", False),
        ))  # fmt: skip
    except Exception:
        return False


def score(rows: list[dict]) -> tuple[list[bool], list[bool], float, float]:
    """Verdicts of tiplight and Math-Verify, and their wall times in seconds."""
    start = time.perf_counter()
    ours = [grade(r["response"], r["gold"]) for r in rows]
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    theirs = [math_verify_grade(r) for r in rows]
    return ours, theirs, ours_s, time.perf_counter() - start


def threaded_check(rows: list[dict], threads: int) -> str:
    """Grade all rows sequentially, then from `threads` threads while two busy processes load the CPU
    (cache cleared before each run); the number of verdicts that differ, and the slowest call."""
    runs, slowest = [], 0.0
    for n in (1, threads):
        grader_module._CACHE.clear()
        burners = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 if n > 1 else 0)
        ]
        try:
            with ThreadPoolExecutor(n) as ex:
                timed = list(ex.map(_timed_grade, rows))
        finally:
            for proc in burners:
                proc.kill()
                proc.wait()
        runs.append([v for v, _ in timed])
        slowest = max(slowest, *(t for _, t in timed))
    differ = sum(a != b for a, b in zip(*runs))
    return (
        f"all {len(rows)} cases from 1 thread, then from {threads} threads with 2 CPU-burning processes: "
        f"{differ} verdicts differ; slowest call {slowest:.2f} s (timeout 5 s)"
    )


def _timed_grade(row: dict) -> tuple[bool, float]:
    start = time.monotonic()
    return grade(row["response"], row["gold"]), time.monotonic() - start


def summary(name: str, rows: list[dict], ours: list[bool], theirs: list[bool]) -> list[str]:
    """Right / wrong accepts / wrong rejects for both checkers, overall and by default options."""
    lines = []
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups["all"].append(i)
        opts = r.get("options") or {}
        if opts.get("precision", 6) != 6 or opts.get("allow_set_relation_comp"):
            groups["non-default options"].append(i)
    for group, idx in groups.items():
        cells = []
        for verdicts in (ours, theirs):
            right = sum(verdicts[i] == rows[i]["expected"] for i in idx)
            fa = sum(verdicts[i] and not rows[i]["expected"] for i in idx)
            fr = sum(not verdicts[i] and rows[i]["expected"] for i in idx)
            cells.append(f"{right:>4}/{len(idx):<4} {right / len(idx):6.1%}  FA {fa:<3} FR {fr:<3}")
        lines.append(f"{name + ' ' + group:28} {cells[0]} | {cells[1]}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--errors", action="store_true", help="list tiplight's errors and disagreements")
    ap.add_argument("--sets", nargs="*", default=list(SETS))
    ap.add_argument("--threads", type=int, default=8, help="regrade every set from this many threads")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # Math-Verify logs every timeout and parse failure
    warmup()
    print(f"{'set':28} {'tiplight: right':>17}  {'wrong accepts/rejects':<14} | math-verify 0.9")
    details = []
    for name in args.sets:
        rows = load(name)
        ours, theirs, ours_s, theirs_s = score(rows)
        print("\n".join(summary(name, rows, ours, theirs)))
        details.append(f"{name}: tiplight {ours_s:.1f} s, math-verify {theirs_s:.1f} s for {len(rows)} cases")
        for r, a, b in zip(rows, ours, theirs):
            if args.errors and (a != r["expected"] or b != r["expected"]):
                who = "both wrong" if a == b else ("tiplight wrong" if a != r["expected"] else "mv wrong")
                details.append(
                    f"  [{who}] expected={r['expected']} gold={r['gold'][:70]!r} response={r['response'][-90:]!r}"
                )
    details.append(threaded_check([r for name in args.sets for r in load(name)], args.threads))
    pool = get_pool()
    details.append(f"grading workers: {pool.size}; comparisons that overran: {pool.replaced} "
                   f"(retried on a warm worker: {pool.retried})")  # fmt: skip
    print("\n" + "\n".join(details))


if __name__ == "__main__":
    main()
