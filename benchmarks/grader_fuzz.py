"""Fuzz the checker: generated LaTeX soup and adversarial strings; count hangs, crashes, executions.

A hang is a `grade` call that returns later than twice its timeout + 1 s (an overrun is retried once); a crash is any exception escaping
`grade`/`grade_many`/`extract_answer`; an execution is any payload's marker file appearing. Calls run
on the main thread, on worker threads, and through `grade_many`.

    python benchmarks/grader_fuzz.py --n 600 > benchmarks/results/grader_fuzz.txt
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tiplight.evals import extract_answer, grade, grade_many, load_benchmark
from tiplight.evals.pool import get_pool

TOKENS = [
    *"0123456789", "x", "y", "i", "e", "a", "+", "-", "*", "/", "^", "_", "!", "=", "<", ">", ",", ".", " ",
    "(", ")", "[", "]", "{", "}", "\\{", "\\}", "|", "$", "%", "&", "\\\\", "\\frac", "\\dfrac", "\\sqrt",
    "\\pi", "\\infty", "\\pm", "\\cdot", "\\times", "\\le", "\\ge", "\\cup", "\\in", "\\boxed{", "\\fbox{",
    "\\text{", "\\left(", "\\right)", "\\left[", "\\right]", "^\\circ", "\\%", "\\$", "\\ldots", "\\sin",
    "\\log", "\\ln", "\\binom", "\\begin{pmatrix}", "\\end{pmatrix}", "\\mathrm{", "{,}", ",\\!", "\\!",
    " and ", "The answer is ", "Final Answer: ", "<|im_end|>", "**", "\n", "10^{", "9^{9^{", "99!", "e^{",
]  # fmt: skip


# pairs that need seconds of sympy (simplify is forced by the extra y): they must time out and be killed
SLOW_PAIRS = [
    (
        "\\frac{\\sin(x)^{6}+\\cos(x)^{6}+3\\sin(x)^2\\cos(x)^2}{\\tan(x)^2+1}"
        "+\\frac{\\sin(3x)\\cos(5x)+\\tan(2x)^{3}}{\\cosh(x)^{2}-\\sinh(x)^{2}}",
        "\\cos(x)^2+\\sin(3x)\\cos(5x)+\\tan(2x)^{3}+y-y",
    )
]


def adversarial(marker: Path) -> list[str]:
    """Hand-made hostile inputs: towers, huge factorials, deep nesting, huge strings, code payloads."""
    touch = f"__import__('os').system('touch {marker}')"
    return [
        "9^{9^{9^9}}", "\\boxed{9^{9^{9^9}}}", "10^{10^{100}}", "2^{2^{2^{2^{2^{2}}}}}", "x^{x^{x^{x^{x}}}}",
        "(10^{100})!", "100000!", "99999999999!", "\\binom{1000000000}{500000000}", "2^{99999999}",
        "10^{-10^{10}}", "\\frac{1}{10^{10^{10}}}", "\\sum_{n=1}^{10^{10}} n^{n}", "\\prod_{k=1}^{10^9} k",
        "\\int_0^{\\infty} e^{-x^{100}} dx", "\\lim_{x\\to 0} \\frac{\\sin x}{x}", "\\sin(10^{4000})",
        "\\frac{0}{0}", "1/0", "0^0", "\\infty - \\infty", "\\sqrt{-1}^{\\sqrt{-1}}", "(x+y)^{300}",
        "\\frac{" * 3000 + "1" + "}{2}" * 3000, "(" * 10000 + "1" + ")" * 10000, "{" * 100_000, "}" * 100_000,
        "\\sqrt{" * 1000 + "2" + "}" * 1000, "\\left(" * 2000, "1" * 1_000_000, "9" * 5000, "1." + "1" * 5000,
        "\\boxed{" * 150_000, "\\boxed{1}" * 100_000, "final answer is " * 60_000, "1," * 500_000,
        "a" * 1_000_000, ("x+" * 300_000) + "1", "\\begin{pmatrix}" + "1&" * 5000 + "1\\end{pmatrix}",
        "\\{" + ",".join(map(str, range(20000))) + "\\}", "(" + ",".join("1" * 3 for _ in range(10000)) + ")",
        touch, f"\\boxed{{{touch}}}", f"The answer is {touch}.", f"exec(\"{touch}\")", f"eval(\"{touch}\")",
        f"\\text{{{touch}}}", "().__class__.__bases__[0].__subclasses__()", "lambda: 0", "Symbol('x')",
        f"__import__('subprocess').call(['touch', '{marker}'])", "\\input{/etc/passwd}", "\\def\\x{\\x}\\x",
        "\\newcommand{\\a}{\\a}\\a", "\\csname x\\endcsname", "\x00\x01\x02", "\ud800", "∞ − ≤ ≥ ½ ⅓",
        "\\boxed{\\text{" + "}" * 100 + "}}", _nested_sets(9), _nested_sets(9).replace("8", "9"), "\\frac12" * 10000, "^" * 10000, "_" * 10000, "!" * 10000,
    ]  # fmt: skip


def _nested_sets(n: int) -> str:
    """A set of n sets of n sets of n numbers: order-free matching costs up to n^6 comparisons."""
    inner = "\\{" + ",".join(map(str, range(n))) + "\\}"
    middle = "\\{" + ",".join([inner] * n) + "\\}"
    return "\\{" + ",".join([middle] * n) + "\\}"


def generated(rng: random.Random, n: int) -> list[str]:
    """Random token soup of 1 to 120 tokens, a fifth of it wrapped in a box."""
    out = []
    for _ in range(n):
        s = "".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 120)))
        out.append(f"\\boxed{{{s}}}" if rng.random() < 0.2 else s)
    return out


def timed_grade(pair: tuple[str, str], timeout: float) -> tuple[float, str | None]:
    """(seconds, error) of one `grade` call."""
    start = time.monotonic()
    try:
        verdict = grade(pair[0], pair[1], timeout=timeout)
        extract_answer(pair[0])
        error = None if isinstance(verdict, bool) else f"non-bool verdict {verdict!r}"
    except BaseException as exc:  # the point of the fuzz: nothing may escape
        error = f"{type(exc).__name__}: {exc}"[:200]
    return time.monotonic() - start, error


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=600, help="generated strings")
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args()
    rng = random.Random(0)
    marker = Path(tempfile.mkdtemp()) / "fuzz_pwned"
    golds = [p["answer"] for p in load_benchmark("math500")]
    hostile = adversarial(marker)
    pairs = [(s, rng.choice(golds)) for s in generated(rng, args.n)]
    pairs += (
        [(s, rng.choice(golds)) for s in hostile] + [(s, s) for s in hostile] + [("1", s) for s in hostile]
    )
    pairs += [(a, b) for a, b in zip(generated(rng, args.n // 4), generated(rng, args.n // 4))]
    pairs += SLOW_PAIRS * 5
    pool = get_pool(2)
    pool.warmup()
    start = time.monotonic()
    main_thread = [timed_grade(p, args.timeout) for p in pairs]
    with ThreadPoolExecutor(max_workers=4) as ex:  # off the main thread
        threaded = list(ex.map(lambda p: timed_grade(p, args.timeout), pairs[::3]))
    batch_start = time.monotonic()
    try:
        batch = grade_many([a for a, _ in pairs], [b for _, b in pairs], timeout=args.timeout, num_workers=2)
        batch_error = None if len(batch) == len(pairs) and all(isinstance(v, bool) for v in batch) else "bad"
    except BaseException as exc:
        batch_error = f"{type(exc).__name__}: {exc}"
    batch_s = time.monotonic() - batch_start
    results = main_thread + threaded
    limit = 2 * args.timeout + 1.0
    hangs = [(i, t) for i, (t, _) in enumerate(results) if t > limit]
    crashes = [(i, e) for i, (_, e) in enumerate(results) if e]
    print(f"pairs graded: {len(results)} single calls ({len(main_thread)} main thread, {len(threaded)} on 4 threads)"
          f" + {len(pairs)} in one grade_many batch")  # fmt: skip
    print(f"adversarial inputs: {len(hostile)} (each as pred vs a MATH-500 gold, vs itself, and as gold)")
    print(f"longest input: {max(len(a) + len(b) for a, b in pairs):,} characters")
    print(f"timeout per grade: {args.timeout} s; hang = a call longer than {limit} s")
    print(f"hangs: {len(hangs)}")
    print(
        f"crashes (exceptions escaping grade/extract_answer): {len(crashes)}; grade_many error: {batch_error}"
    )
    print(f"payloads executed (marker file exists): {int(marker.exists())}")
    print(
        f"slowest single call: {max(t for t, _ in results):.2f} s; workers killed and replaced: {pool.replaced}"
    )
    print(f"wall time: singles {batch_start - start:.1f} s, batch {batch_s:.1f} s")
    print("slowest inputs (pred | gold, first 60 characters):")
    for i in sorted(range(len(main_thread)), key=lambda i: -main_thread[i][0])[:8]:
        print(f"  {main_thread[i][0]:.2f} s  {pairs[i][0][:60]!r} | {pairs[i][1][:60]!r}")
    for i, e in crashes[:10]:
        print("  crash:", i, e)
    for i, t in hangs[:10]:
        print(f"  hang: {i} {t:.2f} s")


if __name__ == "__main__":
    main()
