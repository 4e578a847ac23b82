"""The sympy side of the checker: guarded parsing and exact-first comparison of scalar expressions.

Run this only inside a grading worker process (see `pool.py`): sympy can take unbounded time, and
the parent kills a worker that overruns. Inputs are parsed by latex2sympy2_extended's ANTLR grammar
into sympy objects; no string is ever passed to `eval`, `exec`, `sympify` or `parse_expr`.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

from tiplight.evals.equivalence import FastComparator, Undecided, numbers_match
from tiplight.evals.parse import exact_number

MAX_LEN = 400  # characters of one scalar; longer strings are compared as strings only
MAX_EXPONENT = 10_000
MAX_FACTORIAL = 3_000
MAX_DEPTH = 24
NUMERIC_DIGITS = 100
AGREE = 1e-80  # relative agreement of two exact constants at NUMERIC_DIGITS digits that counts as equal
_DECIMAL = re.compile(r"(?<![\d.])(\d*)\.(\d+)(?![\d.])")
_MIXED = re.compile(r"(?<![\d.}^_)])(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}")
# `2(x)` and `)(` are products; `\sec^2(y)` is a power of a function applied to (y)
_IMPLICIT_PRODUCT = re.compile(r"(?<=[\d)])(?<!\^\d)\s*\((?!\s*\))")
_EXPONENT = re.compile(r"\^\s*(\{|\d+|\\?[A-Za-z]+)")
_FACTORIAL = re.compile(r"(\d+)\s*!")
_BIG_INT = re.compile(r"\d{60,}")


def too_costly(s: str) -> bool:
    """Refuse inputs whose evaluation could explode before any parsing: long strings, deep nesting,
    exponent towers, exponents above 10^4, factorials above 3000!, and integers of 60+ digits."""
    if len(s) > MAX_LEN or _BIG_INT.search(s) or "\\underbrace" in s:
        return True
    depth = peak = 0
    for c in s:
        depth += c in "({["
        depth -= c in ")}]"
        peak = max(peak, depth)
    if peak > MAX_DEPTH:
        return True
    if any(int(m.group(1)) > MAX_FACTORIAL for m in _FACTORIAL.finditer(s)):
        return True
    numbers = [int(n[:7]) for n in re.findall(r"\d+", s)]
    big = any(n > MAX_FACTORIAL for n in numbers)
    if (re.search(r"[)}]\s*!", s) and ("^" in s or big)) or ("\\binom" in s and big):
        return True  # (10^{100})!, \binom{10^9}{5}: combinatorial blow-up
    return any(_exponent_too_big(s, m.end(1)) for m in _EXPONENT.finditer(s) if m.group(1) == "{") or any(
        m.group(1).isdigit() and int(m.group(1)[:6]) > MAX_EXPONENT for m in _EXPONENT.finditer(s)
    )


def _exponent_too_big(s: str, start: int) -> bool:
    """The braced exponent starting at `start`: a tower (`^` inside), a factorial, or a big number."""
    depth, i = 1, start
    while i < len(s) and depth:
        depth += (s[i] == "{") - (s[i] == "}")
        i += 1
    body = s[start : i - 1]
    if "^" in body or "!" in body or "\\uparrow" in body:
        return True
    numbers = [int(n) for n in re.findall(r"\d+", body)]
    return any(n > MAX_EXPONENT for n in numbers) or (
        "\\cdot" in body and len(numbers) > 1 and max(numbers) > 100
    )


@lru_cache(maxsize=4096)
def to_sympy(s: str):
    """Parse one cleaned LaTeX scalar into sympy, decimals read as exact fractions. Raises on failure."""
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig, latex2sympy
    from latex2sympy2_extended.math_normalization import NormalizationConfig
    from sympy import I, Symbol

    exact = _MIXED.sub(_mixed_as_sum, _DECIMAL.sub(_decimal_as_fraction, s))
    # the grammar reads `2(\\frac{14}{3})` and `(2)(\\frac{1}{3})` as mixed numbers (2 + 14/3): make the
    # product explicit
    exact = _IMPLICIT_PRODUCT.sub(r"\\cdot(", exact)
    expr = latex2sympy(
        exact,
        normalization_config=NormalizationConfig(
            basic_latex=True, units=False, malformed_operators=True, nits=False, boxed="none"
        ),
        conversion_config=ConversionConfig(lowercase_symbols=False, interpret_as_mixed_fractions=False),
    )
    return expr.subs(Symbol("i"), I) if hasattr(expr, "subs") else expr


def _mixed_as_sum(m: re.Match) -> str:
    """`1\\frac{4}{5}` -> `(1+\\frac{4}{5})` for a proper fraction: MATH writes mixed numbers. (The
    parser's own mixed-number option also rewrites `2(\\frac{14}{3})` to 2 + 14/3, so it stays off.)"""
    whole, num, den = m.groups()
    if int(num) >= int(den):
        return m.group(0)
    return f"({whole}+\\frac{{{num}}}{{{den}}})"


def _decimal_as_fraction(m: re.Match) -> str:
    """`3.14` -> `(\\frac{314}{100})`: exact arithmetic; tolerance is applied by the caller."""
    return "(\\frac{" + m.group(1) + m.group(2) + "}{1" + "0" * len(m.group(2)) + "})"


class SympyComparator(FastComparator):
    """Exact first (fast path, `simplify`), then high-precision numerics with relative tolerance."""

    budget = 10**12  # runs in a worker, where the hard limit is the parent's deadline

    def __init__(self) -> None:
        self.notes: list[str] = []  # why a comparison failed (parse errors, refusals), for logging
        self.unsure = False  # a side could not be parsed: the rejection is not settled
        self.refused = False  # a side is too costly to evaluate: no other reader is asked either

    def _parse_pair(self, pred: str, gold: str):
        """Both sides parsed, or (None, None) with a note naming the string that did not parse."""
        parsed = []
        for side in (pred, gold):
            try:
                parsed.append(to_sympy(side))
            except Exception as exc:  # the grammar raises bare Exceptions on malformed input
                self.notes.append(f"unparsable {side[:80]!r}: {str(exc).splitlines()[0][:80]}")
                self.unsure = True
                return None, None
        return parsed[0], parsed[1]

    def _sympy_pair(self, pred: str, gold: str) -> tuple | None:
        """Both sides parsed by sympy, or None when either is too costly (noted) or unparsable."""
        if too_costly(pred) or too_costly(gold):
            self.notes.append(f"refused as too costly: {pred[:60]!r} vs {gold[:60]!r}")
            self.refused = True
            return None
        p, g = self._parse_pair(pred, gold)
        return None if p is None or g is None else (p, g)

    def scalar(self, pred: str, gold: str) -> bool:
        """See `equivalence.Comparator.scalar`."""
        try:
            return super().scalar(pred, gold)
        except Undecided:
            pass
        pair = self._sympy_pair(pred, gold)
        return pair is not None and _equal(*pair, pred, gold)

    def proportional(self, pred: str, gold: str, positive: bool) -> bool:
        """See `equivalence.Comparator.proportional`: the ratio simplifies to a (positive) constant."""
        try:
            return super().proportional(pred, gold, positive)
        except Undecided:
            pass
        pair = self._sympy_pair(pred, gold)
        if pair is None or not hasattr(pair[0], "free_symbols") or pair[1] == 0:
            return False
        p, g = pair
        if _unevaluated(p) or _unevaluated(g):
            return False
        ratio = _numeric_ratio(p, g)
        if ratio is None:  # not evaluable at points: decide symbolically
            from sympy import simplify

            exact = simplify(p / g)
            if exact.free_symbols or exact == 0 or not exact.is_finite:
                return False
            return bool(exact.is_positive) if positive else True
        return ratio != 0 and (ratio.real > 0 if positive else True)


def _points(symbols, n: int = 6):
    """`n` reproducible random points (values in ±[0.3, 3]) for the given symbols."""
    rng = random.Random(0)
    for _ in range(n):
        yield {s: rng.choice([-1, 1]) * rng.uniform(0.3, 3.0) for s in symbols}


def _numeric_ratio(p, g) -> complex | float | None:
    """p / g when it is the same constant at random points (0 when it is not), None when the
    expressions cannot be evaluated there. Decides linear and quadratic equations in milliseconds,
    where `simplify` of the ratio takes a large share of a second."""
    symbols = sorted(p.free_symbols | g.free_symbols, key=lambda s: s.name)
    first = None
    for point in _points(symbols):
        try:
            pv, gv = complex(p.evalf(30, subs=point)), complex(g.evalf(30, subs=point))
        except (TypeError, ValueError):
            return None
        if abs(gv) < 1e-12:
            return None
        ratio = pv / gv
        if first is None:
            first = ratio
        elif abs(ratio - first) > 1e-9 * max(1.0, abs(first)):
            return 0
    return first


def _equal(p, g, pred: str, gold: str) -> bool:
    """Decide p == g for parsed sympy objects; see `SympyComparator`."""
    from sympy import Expr, simplify

    if not isinstance(p, Expr) or not isinstance(g, Expr):
        return p == g
    if degenerate(p) or degenerate(g):
        return False  # complex infinity and nan equal nothing: `1:00` vs `12:00`, 1/0 vs 2/0
    if p == g:
        return True
    if _unevaluated(p) or _unevaluated(g):  # sums, integrals, limits with free bounds: structure only
        return str(p) == str(g)  # the parser may give the same symbol different assumptions
    if p.free_symbols or g.free_symbols:
        return _equal_symbolic(p, g)
    p_dec, g_dec = _decimal_digits(pred), _decimal_digits(gold)
    if p_dec is not None or g_dec is not None:
        return _equal_approx(p, g, pred, gold, p_dec, g_dec)
    p_exact, g_exact = exact_rational(p), exact_rational(g)
    if p_exact is not None and g_exact is not None:  # 60! + 1 vs 60!: exactly, past any numeric precision
        return p_exact == g_exact
    pv, gv = p.evalf(NUMERIC_DIGITS), g.evalf(NUMERIC_DIGITS)
    finite = pv.is_number and gv.is_number and pv.is_finite and gv.is_finite
    scale = max(abs(pv), abs(gv)) if finite else 0
    if finite and abs(pv - gv) > scale * 1e-20:
        return False  # clearly different values (relative, so 1/2004! != 1/2006!): skip simplify
    if finite and scale != 0 and not (g.is_zero or p.is_zero) and abs(pv - gv) <= scale * AGREE:
        return True  # equal to 80 digits: decided before `simplify`, which can take seconds on radicals
    return bool(simplify(p - g) == 0)


def exact_rational(expr):
    """The exact value of a parsed expression when it is an integer or a fraction built by +, -, *, /,
    powers and factorials (the parser leaves these unevaluated), else None (pi, irrational radicals)."""
    from sympy import Add, Mul, Pow, binomial, factorial

    if expr.is_Rational:
        return expr
    if not isinstance(expr, (Add, Mul, Pow, factorial, binomial)):
        return None
    args = [exact_rational(a) for a in expr.args]
    if any(a is None for a in args):
        return None
    value = expr.func(*args)  # evaluated: the guards in `too_costly` bound exponents and factorials
    return value if value.is_Rational else None


def _unevaluated(expr) -> bool:
    """A sum, product, integral, limit or derivative with free symbols: evaluating it at points or
    simplifying it takes seconds and rarely decides anything."""
    from sympy import Derivative, Integral, Limit, Product, Sum

    return bool(expr.free_symbols) and expr.has(Sum, Product, Integral, Limit, Derivative)


def degenerate(expr) -> bool:
    """Complex infinity or nan anywhere in a sympy object."""
    from sympy import Basic, S

    return isinstance(expr, Basic) and (expr.has(S.ComplexInfinity) or expr.has(S.NaN))


def _decimal_digits(s: str) -> int | None:
    number = exact_number(s)
    return number[1] if number else None


def _equal_approx(p, g, pred: str, gold: str, p_dec: int | None, g_dec: int | None) -> bool:
    """Exactly one side is a decimal literal: tolerance relative to its digits (`numbers_match`)."""
    from fractions import Fraction

    value = (g if p_dec is not None else p).evalf(60)
    if not (value.is_real and value.is_finite):
        return False
    approx = Fraction(str(value))  # 60 significant digits, far finer than any decimal tolerance
    if p_dec is not None:
        return numbers_match(exact_number(pred)[0], p_dec, approx, None, pred)
    return numbers_match(approx, None, exact_number(gold)[0], g_dec, pred)


def _equal_symbolic(p, g) -> bool:
    """Agreement at random points first (cheap, and decisive when they differ), then names and
    `simplify` when the symbols differ (they can only be equal if the extra ones cancel)."""
    from sympy import simplify

    symbols = sorted(p.free_symbols | g.free_symbols, key=lambda s: s.name)
    for point in _points(symbols):
        try:
            pv, gv = complex(p.evalf(30, subs=point)), complex(g.evalf(30, subs=point))
        except (TypeError, ValueError):
            return simplify(p - g) == 0
        if abs(pv - gv) > 1e-9 * max(1.0, abs(pv), abs(gv)):
            return False
    if {s.name for s in p.free_symbols} != {s.name for s in g.free_symbols}:
        return simplify(p - g) == 0
    return True

