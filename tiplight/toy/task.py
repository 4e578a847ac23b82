"""The toy task: multi-step arithmetic in the MATH answer format (``\\boxed{answer}``).

Two problem kinds, both worked in steps small enough for a sub-million-parameter model:

- ``add``: ``a+b`` with two n-digit integers, worked column by column from the right. Each line adds one
  column (plus the carry, shown as ``+1``) and then restates the answer digits found so far, so every
  step only needs one digit-table lookup and a copy of the previous line::

      What is 478+256?
      8+6=14 4
      7+5+1=13 34
      4+2+1=7 734
      \\boxed{734}

- ``frac``: ``a/b+c/d``: cross-multiply, add, then reduce by one small prime per line::

      What is 3/4+5/6?
      (3*6+5*4)/(4*6)
      =(18+20)/24
      =38/24
      =19/12
      \\boxed{19/12}

Difficulty comes from the operands (more digits, more carries, more reductions), not the format: the
``difficulty`` field is the number of worked lines. Splits are drawn from fixed seeds. The first
``HELD_OUT`` test problems are excluded from train, so they are unseen by the shipped models. The test
split grows to any size with the same prefix and distribution, so an accuracy can be as precise as a
comparison needs (1,200 problems: a standard error of at most 1.44 points); problems after the held-out
ones may also be train prompts (only ~2,000 distinct fraction sums exist, and train draws 20,000 problems),
which suits comparing runs of one student but is not a clean held-out measure.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction
from functools import cache

PROMPT_TEMPLATE = "What is {expr}?\n"
SPLIT_SEEDS = {"train": 0, "test": 1}
DEFAULT_SIZES = {"train": 20_000, "test": 1200}
HELD_OUT = 300  # test problems excluded from train
_PRIMES = (2, 3, 5, 7, 11, 13)


@dataclass(frozen=True)
class TaskConfig:
    """Difficulty knobs of the generator.

    Args:
        p_frac: probability that a problem is a fraction sum (otherwise an integer addition).
        add_digits: inclusive range of operand lengths for ``add`` problems.
        frac_max_num: numerators are drawn from ``1..frac_max_num``.
        frac_max_den: denominators are drawn from ``2..frac_max_den``.
    """

    p_frac: float = 0.5
    add_digits: tuple[int, int] = (2, 4)
    frac_max_num: int = 9
    frac_max_den: int = 6


def add_solution(a: int, b: int, forget_carry: bool = False) -> tuple[str, str]:
    """Column-wise working of ``a+b`` for equal-length operands; returns ``(solution, answer)``.

    ``forget_carry``: the planted wrong rule of the overconfident world (``toy.planted``): no column adds
    the carry of the one before (nor writes ``+1``), so the working ends on a wrong sum when any column
    but the last reaches 10.
    """
    da, db = str(a)[::-1], str(b)[::-1]
    lines, digits, carry = [], "", 0
    for i, (x, y) in enumerate(zip(da, db)):
        carry = 0 if forget_carry else carry
        total = int(x) + int(y) + carry
        last = i == len(da) - 1
        digits = (str(total) if last else str(total % 10)) + digits
        lhs = f"{x}+{y}" + ("+1" if carry else "")
        lines.append(f"{lhs}={total} {digits}")
        carry = total // 10
    answer = str(carry_free_sum(a, b) if forget_carry else a + b)
    assert digits == answer  # the working must end on the sum its rule gives
    return "\n".join([*lines, f"\\boxed{{{answer}}}"]), answer


def carry_free_sum(p: int, q: int) -> int:
    """``p + q`` added column by column with every carry dropped; the top column keeps its whole sum
    (``18 + 25 -> 33``, ``45 + 56 -> 91``): the sum the planted rule of ``add_solution`` writes."""
    dp, dq = str(p)[::-1], str(q)[::-1]
    width = max(len(dp), len(dq))
    columns = [int(dp[i] if i < len(dp) else 0) + int(dq[i] if i < len(dq) else 0) for i in range(width)]
    return sum((c if i == width - 1 else c % 10) * 10**i for i, c in enumerate(columns))


def _format_fraction(num: int, den: int) -> str:
    """``num/den`` as written in the toy world; a whole number when ``den == 1``."""
    return str(num) if den == 1 else f"{num}/{den}"


def frac_solution(a: int, b: int, c: int, d: int, forget_carry: bool = False) -> tuple[str, str]:
    """Working of ``a/b+c/d`` (cross-multiply, add, reduce prime by prime); returns ``(solution, answer)``.

    ``forget_carry``: the numerators are added with ``carry_free_sum`` (the overconfident world's rule).
    """
    ad, cb = a * d, c * b
    num, den = carry_free_sum(ad, cb) if forget_carry else ad + cb, b * d
    lines = [f"({a}*{d}+{c}*{b})/({b}*{d})", f"=({ad}+{cb})/{den}", f"={num}/{den}"]
    while den > 1:
        p = next((p for p in _PRIMES if num % p == 0 and den % p == 0), None)
        if p is None:
            break
        num, den = num // p, den // p
        lines.append(f"={_format_fraction(num, den)}")
    answer = _format_fraction(num, den)
    assert forget_carry or Fraction(num, den) == Fraction(a, b) + Fraction(c, d)
    assert Fraction(num, den).denominator == den
    return "\n".join([*lines, f"\\boxed{{{answer}}}"]), answer


def _draw(rng: random.Random, cfg: TaskConfig) -> dict:
    """One random problem (without ``id``) drawn with ``rng`` under the knobs of ``cfg``."""
    if rng.random() < cfg.p_frac:
        a, c = rng.randint(1, cfg.frac_max_num), rng.randint(1, cfg.frac_max_num)
        b, d = rng.randint(2, cfg.frac_max_den), rng.randint(2, cfg.frac_max_den)
        expr, (solution, answer), kind = f"{a}/{b}+{c}/{d}", frac_solution(a, b, c, d), "frac"
        operands = [f"{a}/{b}", f"{c}/{d}"]
    else:
        n = rng.randint(*cfg.add_digits)
        a, b = (rng.randint(10 ** (n - 1), 10**n - 1) for _ in range(2))
        expr, (solution, answer), kind = f"{a}+{b}", add_solution(a, b), "add"
        operands = [str(a), str(b)]
    prompt = PROMPT_TEMPLATE.format(expr=expr)
    return {
        "prompt": prompt,
        "problem": prompt,
        "answer": answer,
        "solution": solution,
        "kind": kind,
        "operands": operands,
        "difficulty": solution.count("\n"),  # worked lines before the boxed answer
    }


def _generate(seed: int, n: int, cfg: TaskConfig, exclude: frozenset[str], unique: bool) -> list[dict]:
    """``n`` problems from ``seed``, skipping prompts in ``exclude`` (and repeats if ``unique``).

    The result is a prefix of any longer run with the same arguments.
    """
    rng, out, seen = random.Random(seed), [], set(exclude)
    while len(out) < n:
        item = _draw(rng, cfg)
        if item["prompt"] not in seen:
            out.append(item)
            if unique:
                seen.add(item["prompt"])
    return out


@cache
def _held_out_prompts(cfg: TaskConfig) -> frozenset[str]:
    """Prompts of the first ``HELD_OUT`` test problems (excluded from train)."""
    test = _generate(SPLIT_SEEDS["test"], HELD_OUT, cfg, frozenset(), unique=True)
    return frozenset(p["prompt"] for p in test)


def load_problems(split: str, n: int | None = None, *, cfg: TaskConfig | None = None) -> list[dict]:
    """Problems of a split, deterministic and disjoint between ``train`` and ``test``.

    Args:
        split: ``"train"`` or ``"test"``.
        n: how many problems (default: 20,000 train, 1,200 test); the first ``n`` problems are the same
            whatever ``n`` is.
        cfg: difficulty knobs (default ``TaskConfig()``, the toy world the shipped models learned).

    Returns:
        dicts with ``id``, ``prompt`` (exact model input), ``problem`` (same text), ``answer`` (gold),
        ``solution`` (worked steps ending in ``\\boxed{answer}``), ``kind``, ``operands``, ``difficulty``.
    """
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split={split!r} is not a toy split; allowed: {sorted(SPLIT_SEEDS)}")
    cfg = cfg or TaskConfig()
    size = DEFAULT_SIZES[split] if n is None else n
    exclude = _held_out_prompts(cfg) if split == "train" else frozenset()
    # Test problems are distinct; train may repeat the small ones (there are only 8,100 two-digit sums).
    items = _generate(SPLIT_SEEDS[split], size, cfg, exclude, unique=split == "test")
    return [{"id": f"toy-{split}-{i:05d}", **item} for i, item in enumerate(items)]
