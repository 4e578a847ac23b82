"""Grading throughput (answers per second) on MATH-500 golds, with the default worker pool.

Mixes, each with a cold cache and warm workers:
  realistic: per problem 4 model-like answers: the gold boxed after some reasoning, a respaced/`\\dfrac`
             variant stated in a sentence, a wrong answer (another problem's gold), and a decimal form
             of the gold when it is a fraction;
  fast-only: the part of the realistic mix decided in-process (no worker);
  sympy:     every answer needs the worker (the gold times 1 in a different form).
Math-Verify (single process, its defaults) grades the realistic mix for reference.

    python benchmarks/grader_throughput.py > benchmarks/results/grader_throughput.txt
"""

from __future__ import annotations

import contextlib
import os
import re
import time

from tiplight.evals import grade_many, load_benchmark
from tiplight.evals import grader as grader_module
from tiplight.evals.grader import fast_verdict, gold_answer
from tiplight.evals.pool import get_pool


def realistic(golds: list[str]) -> tuple[list[str], list[str]]:
    responses, targets = [], []
    for i, gold in enumerate(golds):
        variant = gold.replace("\\frac", "\\dfrac").replace("\\left", "").replace("\\right", "")
        m = re.fullmatch(r"\\frac\{(\d+)\}\{(\d+)\}", gold)
        decimal = f"{int(m.group(1)) / int(m.group(2)):.6f}" if m else gold
        for text in (
            f"Let me think step by step.\nWe compute the quantity carefully.\n\\boxed{{{gold}}}",
            f"After simplifying, the answer is ${variant}$.",
            f"So the result is \\boxed{{{golds[(i + 7) % len(golds)]}}}.",
            f"Numerically this is \\boxed{{{decimal}}}",
        ):
            responses.append(text)
            targets.append(gold)
    return responses, targets


def sympy_heavy(golds: list[str]) -> tuple[list[str], list[str]]:
    scalar = [g for g in golds if re.search(r"\\(sqrt|pi|frac)", g) and not re.search(r"[,=<>]|\\text", g)]
    return [f"\\boxed{{\\frac{{2({g})}}{{2}}}}" for g in scalar], scalar


def timed(responses: list[str], golds: list[str]) -> tuple[float, list[bool]]:
    grader_module._CACHE.clear()
    start = time.perf_counter()
    verdicts = grade_many(responses, golds)
    return time.perf_counter() - start, verdicts


def main() -> None:
    golds = [p["answer"] for p in load_benchmark("math500")]
    pool = get_pool()
    pool.warmup()
    timed(["\\boxed{\\sqrt{2}}"], ["\\sqrt{2}"])  # workers have imported sympy
    print(f"CPU cores visible: {os.cpu_count()}; grading workers: {pool.size}")
    print(f"{'mix':10} {'answers':>8} {'in-process':>11} {'seconds':>8} {'answers/s':>10} {'accepted':>9}")
    responses, targets = realistic(golds)
    fast = [
        (r, g)
        for r, g in zip(responses, targets)
        if fast_verdict(grader_module.extract_answer(r) or "", g) is not None
    ]
    mixes = {
        "realistic": (responses, targets),
        "fast-only": ([r for r, _ in fast], [g for _, g in fast]),
        "sympy": sympy_heavy(golds),
    }
    for name, (responses, targets) in mixes.items():
        in_process = sum(
            fast_verdict(r, gold_answer(g)) is not None
            for r, g in zip([grader_module.extract_answer(r) or "" for r in responses], targets)
        )
        seconds, verdicts = timed(responses, targets)
        print(
            f"{name:10} {len(responses):>8} {in_process / len(responses):>10.0%} {seconds:>8.2f} "
            f"{len(responses) / seconds:>10.0f} {sum(verdicts):>9}"
        )
    responses, targets = realistic(golds)
    try:
        from math_verify import parse, verify
    except ImportError:
        return
    start = time.perf_counter()
    for r, g in zip(responses, targets):
        with contextlib.suppress(Exception):
            verify(parse("\\boxed{" + g + "}"), parse(r))
    seconds = time.perf_counter() - start
    print(f"math-verify realistic mix, 1 process: {len(responses) / seconds:.0f} answers/s ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
